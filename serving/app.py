"""The Flask app: the routes, wired to the protocol (serving/protocol.py, serving/messages.py), the access
rule (serving/access.py), the generation queue (serving/queue.py) and the model (serving/replies.py).

    app = create_app(model, tokenizer, "full_sft_512x8", Defaults(max_tokens=512), api_key=None)
    Server(app, "127.0.0.1", 8000).serve_forever()

Every error the app gives, 401, 403, 404, 405, 413, 415, 429 and 503 included, is a JSON body in OpenAI's
error shape.
"""
import time
import traceback
from dataclasses import replace
from pathlib import Path

from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from model.generate import context_length
from serving import toolrun
from serving.access import check_access, normalise_hosts
from serving.messages import parse_request
from serving.protocol import MAX_BODY_BYTES, APIError, Defaults, new_id, parse_body, parse_completion_request
from serving.queue import EventStream, GenerationQueue
from serving.replies import Job, Replies

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
QUEUE_KEY = "minimind_generation_queue"  # app.extensions[QUEUE_KEY]: the queue a draining server closes


def _read_body(limit: int = MAX_BODY_BYTES) -> dict:
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise APIError(413, f"the request body is over {limit} bytes", code="request_too_large")
    return parse_body(raw)


def _add_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(err: APIError):
        return jsonify(err.body()), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):  # 404, 405, 413 ... as JSON too, so clients can read them
        kind = "invalid_request_error" if err.code < 500 else "server_error"
        return jsonify(APIError(err.code, f"{err.name}: {err.description}", kind=kind).body()), err.code

    @app.errorhandler(Exception)
    def unexpected(err: Exception):  # a bug: logged with its traceback, answered in the same shape
        traceback.print_exc()
        return jsonify(APIError(500, f"internal error: {type(err).__name__}", kind="server_error").body()), 500


def _respond(replies: Replies, job: Job, headers: dict):
    """The answer to a job whose queue place is taken: a stream of events or one JSON body."""
    completion_id = new_id(job.kind)
    if job.sampling.stream:
        body = EventStream(replies.events(job, completion_id), lambda: replies.queue.leave(False))
        headers = {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(body, mimetype="text/event-stream", headers=headers)
    return jsonify(replies.whole(job, completion_id)), 200, headers


def _prepared(queue: GenerationQueue, prepare):
    """prepare() run inside a queue place, which is given back if it fails (a 400 for a prompt too long)."""
    queue.enter()
    try:
        return prepare()
    except BaseException:
        queue.leave(False)
        raise


def create_app(model, tokenizer, model_name: str, defaults: Defaults = None, api_key: str = None,
               max_queue: int = 16, allowed_hosts=()) -> Flask:
    """The Flask app. Without api_key only loopback Host names (and `allowed_hosts`) are served."""
    defaults = defaults or Defaults()
    queue = GenerationQueue(max_queue)
    replies = Replies(model, tokenizer, model_name, queue)
    card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "minimind",
            "context_length": context_length(model.config)}
    # A chat request that gives no max_tokens gets a quarter of the context, as the chat page does, so that the
    # prompt keeps three quarters: a tool loop's question, call and result fit where half the context would
    # drop the question (a longer reply still slides the window, model/generate.py).
    defaults = replace(defaults, chat_max_tokens=min(defaults.max_tokens, max(16, card["context_length"] // 4)))
    extra_hosts, tool_rate = normalise_hosts(allowed_hosts), toolrun.RateLimit()
    app = Flask(__name__, static_folder=None)
    # One byte over the limit is read, so that a chunked body (no Content-Length) over it is seen: werkzeug
    # cuts such a body at the limit without an error.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    app.extensions[QUEUE_KEY] = queue
    _add_error_handlers(app)
    app.before_request(lambda: check_access(request.method, request.path, request.headers, api_key, extra_hosts))

    app.add_url_rule("/", "page", lambda: send_from_directory(WEB_DIR, "index.html"))
    app.add_url_rule("/chat.js", "chat_js", lambda: send_from_directory(WEB_DIR, "chat.js"))
    app.add_url_rule("/v1/models", "models", lambda: jsonify({"object": "list", "data": [card]}))
    app.add_url_rule("/v1/tools", "tools", lambda: jsonify(toolrun.listing()))

    @app.post("/v1/chat/completions")
    def chat_completions():
        req = parse_request(_read_body(), model_name, defaults)
        job, dropped = _prepared(queue, lambda: replies.chat_job(req))  # built in the queue: bounded work
        return _respond(replies, job, {"X-Dropped-Messages": str(dropped)})

    @app.post("/v1/completions")
    def completions():
        req = parse_completion_request(_read_body(), model_name, defaults, model.config.vocab_size)
        return _respond(replies, _prepared(queue, lambda: replies.text_job(req)), {})

    @app.post("/v1/tools/run")
    def tools_run():
        name, arguments = toolrun.parse_run(_read_body(toolrun.MAX_BODY_BYTES))
        tool_rate.take()
        return jsonify(toolrun.run(name, arguments))

    return app
