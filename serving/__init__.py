"""The OpenAI-compatible server, in parts that each do one thing; my_openai_api.py is the script that runs it.

    protocol.py   the OpenAI protocol as plain functions: reading a body, the shared fields, the error
                  shape, the response and stream-chunk builders
    messages.py   the chat request: messages (tool calls and tool results included), tools, tool_choice
    toolcalls.py  a reply split into content and tool calls, as it streams
    access.py     who may use the server: the access rule, and where the API key comes from
    queue.py      the generation queue: one generation at a time, a bounded wait, the drain switch
    replies.py    generation for a checked request: a whole answer or a stream of events
    toolrun.py    the tools the server runs itself, for the chat page
    app.py        create_app: the Flask routes, wired to the parts above
    server.py     the app on a socket (waitress, or werkzeug with dev=True): the idle-connection rule and
                  the SIGTERM drain

Imports run one way: serving imports model/ and tooluse/, and nothing below it imports serving.
"""
