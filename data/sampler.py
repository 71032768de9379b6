"""The order in which a training run reads its samples: EpochSampler (seeded, resumable, split across DDP
ranks) and group_by_length (batches of rows of similar length)."""
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Indices of one epoch in a (seed, epoch)-determined order, split across DDP ranks, resumable.

    Rank r takes every world_size-th index of the permutation, starting at r; the permutation is
    padded by wrapping so all ranks get the same count. `set_epoch(epoch, skip)` drops the first
    `skip` indices of this rank's share (the samples already trained on before a restart).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 lengths=None, batch_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        # With lengths, consecutive batches hold rows of similar length (group_by_length below).
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def per_rank(self) -> int:
        return -(-self.n // self.world_size)

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.skip)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        total = self.per_rank() * self.world_size
        order = order.repeat(-(-total // self.n))[:total]  # wrap around so every rank has per_rank indices
        if self.lengths is not None:
            order = group_by_length(order, self.lengths, self.batch_size * self.world_size, generator)
        return iter(order[self.rank :: self.world_size][self.skip :].tolist())


GROUP_WINDOW = 64  # batches whose rows are sorted together by group_by_length


def group_by_length(order: torch.Tensor, lengths, block: int, generator: torch.Generator) -> torch.Tensor:
    """The shuffled `order`, rearranged so that each run of `block` indices (one step's rows over all
    processes) holds rows of similar length: every window of GROUP_WINDOW blocks is sorted by length, cut
    into blocks, and the blocks are shuffled. A batch is padded to its longest row, so in a file of short
    word problems and long conversations this cuts the padding from about a third of the compute to
    almost none. Which rows meet in a batch is still random within a window; a partial last block keeps
    its place at the end, so nothing is dropped or repeated."""
    window = block * GROUP_WINDOW
    lengths = torch.as_tensor(lengths)
    pieces = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[torch.sort(lengths[chunk], stable=True).indices]
        full = len(chunk) // block
        blocks = list(chunk[:full * block].view(full, block)) if full else []
        pieces += [blocks[i] for i in torch.randperm(full, generator=generator).tolist()] + [chunk[full * block:]]
    return torch.cat(pieces)
