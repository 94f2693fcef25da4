"""Packed forwards: several texts share one row of a transformer's input, so a step runs few forwards and little
padding whatever its texts' lengths (``packing``: on by default where the model supports it). Shared by the three
trainers: ``train.embed`` (embeddings), ``train.seq_classify`` (the head reads each text's own states) and
``train.sft_classify`` (the loss reads each text's own answer tokens); each checks on the live model, at start-up,
that its packed outputs equal the padded ones, and falls back to padded rows when they do not.

A contrastive step's texts are often short (a title, a tag): padded one per row they need either many forwards
(each with a fixed cost) or much padding. Packed, a row holds consecutive texts, each with its own positions
(``0..len-1``) and an attention mask that lets a token see only the tokens of its own text (and, for decoder
models, only the earlier ones): block-diagonal attention. Every text's token states are then those of the text
encoded alone (up to float rounding), so pooling them gives the same embeddings as the padded layout.
:func:`resolve_packing` verifies that on the live model before training: packing is on by default where it
holds, off (padded chunks) on a model whose attention ignores ``position_ids`` or a 4D mask.

A packed chunk (what :func:`pack_chunk` returns and ``EmbeddingModel`` encodes) for ``n`` texts in ``R`` rows:

===================  ============  ===============================================================================
key                  shape         meaning
===================  ============  ===============================================================================
``input_ids``        ``(R, L)``    texts laid end to end, row by row; pad token after a row's last text
``position_ids``     ``(R, L)``    position of each token in its own text (0 on padding)
``segments``         ``(R, L)``    which of the chunk's texts (0..n-1) each token belongs to; -1 on padding
``token_index``      ``(n, T)``    each text's token slots in the flattened ``(R * L)`` rows (0 past its end)
``attention_mask``   ``(n, T)``    1 on each text's tokens: with ``token_index`` the per-text layout pooling reads
===================  ============  ===============================================================================

Positions count from 0, or from ``padding_idx + 1`` where the model's position embeddings reserve the padding
index (RoBERTa; :func:`first_position`).

``T`` is the chunk's longest text, ``L >= T`` its fullest row. Texts arrive longest first (the collator sorts a
step's rows), and best-fit in that order is best-fit decreasing, so rows fill well; :func:`pack_steps` also
tries rows wider than the longest text and rows of even fill, which leave less room unused at their ends.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    packed_sequence_mask_function,
)

from lorasmith.errors import ConfigError
from lorasmith.recipe_fields import option

logger = logging.getLogger(__name__)

# Texts of very different lengths whose two short ones share a row when packed: the second starts at position
# 3 or so of its row, so a model that ignored position_ids or the mask would give it other outputs.
PROBE_TEXTS = ("packing check: a longer sentence to set the row length of the chunk", "yes", "no")

# Row widths tried, as multiples of a forward's longest text: wider rows leave less room unused at their ends.
WIDTH_FACTORS = (1, 1.5, 2, 3, 4)


def pack_steps(
    sorted_lengths: Sequence[int],
    slots_per_forward: int,
    max_width: int,
    forward_cost: float = 0.0,
    texts_per_padded_forward: int = 0,
    attention_cost: float = 0.0,
) -> list[tuple[int, list[list[int]]]]:
    """Packed forwards of a step's texts, longest first: ``[(first text, rows)]`` where ``rows`` lists, row by row,
    the positions (in ``sorted_lengths``) of the texts laid in it.

    Of the layouts :func:`best_fit` gives for each of :data:`WIDTH_FACTORS` and :func:`balanced_factors` (and, with
    ``texts_per_padded_forward``, the :func:`cheapest_cut` of one text per row, at most that many per forward:
    what packing falls back to when texts too long to share rows would leave them half empty), the one with the
    fewest token slots (rows x their longest fill ``w``, each slot costing ``1 + attention_cost x w``: its
    attention pairs) + ``forward_cost`` per forward. Rows are at most ``max_width``
    long (the run's ``max_length``: a forward's attention then needs no more memory than
    ``slots_per_forward / max_width`` padded texts of that length) unless a text is longer."""

    def cost(forwards) -> float:
        widths = [(len(rows), row_width(rows, sorted_lengths)) for _, rows in forwards]
        return sum(count * width * (1 + attention_cost * width) + forward_cost for count, width in widths)

    factors = (*WIDTH_FACTORS, *balanced_factors(sorted_lengths, max_width, slots_per_forward))
    layouts = [best_fit(sorted_lengths, slots_per_forward, max_width, factor) for factor in factors]
    if texts_per_padded_forward:
        starts = cheapest_cut(sorted_lengths, texts_per_padded_forward, forward_cost)
        ends = [*starts[1:], len(sorted_lengths)]
        layouts.append([(a, [[text] for text in range(a, b)]) for a, b in zip(starts, ends, strict=True)])
    return min(layouts, key=cost)


def balanced_factors(sorted_lengths: Sequence[int], max_width: int, slots_per_forward: int) -> list[float]:
    """Width factors (x the first text) of rows that share the texts' tokens evenly in one forward: the fewest rows
    of at most ``max_width`` that could hold them all, and one or two rows more, each with 0-10 % room for
    best-fit's gaps. A forward's rows are as long as its fullest one, so even rows leave no half-empty last row.
    Empty when the texts need several forwards (``slots_per_forward``)."""
    total, first = sum(sorted_lengths), sorted_lengths[0]
    if total > slots_per_forward:
        return []
    fewest = -(-total // max(max_width, first))
    return [(total / rows * (1 + slack / 100) + 0.5) / first
            for rows in (fewest, fewest + 1, fewest + 2) for slack in range(0, 11, 2)]  # fmt: skip


def cheapest_cut(sorted_lengths: Sequence[int], max_size: int, forward_cost: float) -> list[int]:
    """Start positions of the chunks of ``sorted_lengths`` (non-increasing) that minimise padded slots +
    ``forward_cost`` per chunk, chunks of at most ``max_size``: exact dynamic programme, ``O(N x max_size)``."""
    # best[j]: least cost of the first j texts; start[j]: where the last chunk of that cover begins
    best, start = [0.0] + [float("inf")] * len(sorted_lengths), [0] * (len(sorted_lengths) + 1)
    for end in range(1, len(sorted_lengths) + 1):
        for begin in range(max(0, end - max_size), end):
            cost = best[begin] + (end - begin) * sorted_lengths[begin] + forward_cost
            if cost < best[end]:
                best[end], start[end] = cost, begin
    starts, end = [], len(sorted_lengths)
    while end:
        end = start[end]
        starts.append(end)
    return starts[::-1]


def row_width(rows: list[list[int]], lengths: Sequence[int]) -> int:
    """Length of a forward's rows: its fullest row."""
    return max(sum(lengths[text] for text in row) for row in rows)


def best_fit(sorted_lengths: Sequence[int], slots_per_forward: int, max_width: int, width_factor: float):
    """Best-fit of the texts, in order (longest first: best-fit decreasing), into rows ``width_factor`` x the
    forward's first text long (at least that text, at most ``max_width`` and ``slots_per_forward``): each text
    goes into the row of the current forward with the least room that holds it (free rooms kept sorted: a
    binary search per text, so batches of thousands of texts pack in milliseconds); when no row has room and
    another would exceed ``slots_per_forward`` (rows x row length), a new forward starts. Each forward covers
    consecutive texts, so the concatenated outputs keep the step's order. A text longer than ``slots_per_forward``
    still gets a forward of its own."""
    forwards: list[tuple[int, list[list[int]]]] = []
    free: list[tuple[int, int]] = []  # (free slots, row) of the current forward's rows with room, sorted
    width = max_rows = 0
    for position, length in enumerate(sorted_lengths):
        at = bisect.bisect_left(free, (length, -1))  # the least room >= length
        if at == len(free) and len(forwards[-1][1] if forwards else ()) >= max_rows:
            width = max(length, min(int(width_factor * length), max_width, slots_per_forward))
            free, max_rows = [], max(slots_per_forward // width, 1)
            forwards.append((position, []))
            at = 0
        rows = forwards[-1][1]
        if at == len(free):  # a new row
            room, row = width, len(rows)
            rows.append([])
        else:
            room, row = free.pop(at)
        rows[row].append(position)
        if room > length:
            bisect.insort(free, (room - length, row))
    return forwards


def pack_chunk(
    input_ids: Tensor,
    lengths: Sequence[int],
    first: int,
    rows: list[list[int]],
    left_padded: bool,
    pad_id: int,
    per_token: Mapping[str, tuple[Tensor, int]] | None = None,
) -> dict[str, Tensor]:
    """The packed chunk (module docstring) of the texts ``rows`` lists, taken from a step's padded ``input_ids``
    ``(N, W)`` (each text padded on the left when ``left_padded``; ``lengths[i]`` tokens in row ``i``). ``rows``
    holds positions ``first..first+n-1``: the chunk's texts come out in that order. One gather on the device.

    ``per_token`` (name -> (``(N, W)`` tensor laid out as ``input_ids``, fill value)): further per-token inputs
    (``token_type_ids``, ``labels``) packed the same way, ``(R, L)`` under the same name, the fill on padding."""
    width, count = input_ids.shape[1], sum(map(len, rows))
    row_length, longest = row_width(rows, lengths), max(lengths[first : first + count])
    source = torch.full((len(rows), row_length), -1, dtype=torch.int64)  # flat index into input_ids, -1 = pad
    positions = torch.zeros((len(rows), row_length), dtype=torch.int64)
    segments = torch.full((len(rows), row_length), -1, dtype=torch.int64)
    token_index = torch.zeros((count, longest), dtype=torch.int64)
    text_mask = torch.zeros((count, longest), dtype=torch.int64)
    for r, texts in enumerate(rows):
        start = 0
        for text in texts:
            n, k = lengths[text], text - first
            column = width - n if left_padded else 0
            source[r, start : start + n] = torch.arange(text * width + column, text * width + column + n)
            positions[r, start : start + n] = torch.arange(n)
            segments[r, start : start + n] = k
            token_index[k, :n] = torch.arange(r * row_length + start, r * row_length + start + n)
            text_mask[k, :n] = 1
            start += n
    device = input_ids.device
    source = source.to(device)

    def take(tensor: Tensor, fill: int) -> Tensor:
        return torch.where(source >= 0, tensor.reshape(-1)[source.clamp(min=0)], fill)

    extra = {name: take(tensor, fill) for name, (tensor, fill) in (per_token or {}).items()}
    return {
        "input_ids": take(input_ids, pad_id),
        "position_ids": positions.to(device),
        "segments": segments.to(device),
        "token_index": token_index.to(device),
        "attention_mask": text_mask.to(device),
        **extra,
    }


def pack_batch(
    input_ids: Tensor,
    attention_mask: Tensor,
    pad_id: int,
    max_width: int,
    one_row: bool = False,
    per_token: Mapping[str, tuple[Tensor, int]] | None = None,
    attention_cost: float = 0.0,
) -> tuple[dict[str, Tensor], Tensor]:
    """A padded batch (``(B, W)`` ids and 0/1 mask, either padding side) -> (one packed chunk of its texts, longest
    first, ``order``: ``(B,)`` the batch row of each of the chunk's texts).

    Rows are at most ``max_width`` tokens (the run's ``max_length``) unless a text is longer, so a forward's
    attention never needs more memory than the padded batch's; of :func:`pack_steps`' layouts the one with the
    fewest slots and attention pairs (``attention_cost``: :func:`attention_pair_cost`). ``one_row`` lays every text
    end to end in a single row instead (varlen attention, :func:`packed_model_inputs`). ``per_token`` as in
    :func:`pack_chunk`."""
    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    rows = [list(range(len(sorted_lengths)))] if one_row else batch_rows(sorted_lengths, max_width, attention_cost)
    left_padded = bool((attention_mask[:, 0] == 0).any())  # a right-padded batch starts with real tokens
    reorder = {name: (tensor[order], fill) for name, (tensor, fill) in (per_token or {}).items()}
    chunk = pack_chunk(input_ids[order], sorted_lengths, 0, rows, left_padded, pad_id, reorder)
    return chunk, order


def batch_rows(sorted_lengths: Sequence[int], max_width: int, attention_cost: float) -> list[list[int]]:
    """The rows of one batch's forward (indices into ``sorted_lengths``, longest first): :func:`pack_steps` given
    slots for every text at full width (``max_width``, or the longest text where that is longer), so it lays them
    all in one forward."""
    width = max(max_width, sorted_lengths[0])
    ((_, rows),) = pack_steps(sorted_lengths, len(sorted_lengths) * width, width, attention_cost=attention_cost)
    return rows


def attention_pair_cost(config) -> float:
    """What one attention pair (a token and a position of its row, masked or not) costs in a packed forward, in
    token slots: ``1024 / (hidden_size x head_dim^2)``, fitted to LoRA forward + backward on a CPU, where a slot
    costs the model's linear layers and a pair its attention: MiniLM (384, 32) measured 1/360 (864 slots: 0.36 s in
    rows of 54, 1.06 s in one row), SmolLM2-135M (576, 64) 1/1950 (576 slots: 2.28 s in rows of 48-192, 2.72 s in
    one). Wide rows fill better but attend more; this weighs the two when a batch's layout is chosen. At most
    MiniLM's 1/384: smaller models (tests' tiny ones) are outside the fit."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return min(1024 / (config.hidden_size * head_dim**2), 1 / 384)


def uses_varlen_attention(config) -> bool:
    """True when ``config``'s attention implementation is a FlashAttention kernel, which reads a packed row's text
    boundaries from ``position_ids`` (varlen) and takes no 4D mask."""
    return "flash" in str(getattr(config, "_attn_implementation", "") or "")


def packed_model_inputs(config, chunk: Mapping[str, Tensor], dtype: torch.dtype, causal: bool, first_position: int = 0):
    """The transformer keyword arguments of a packed ``chunk``: ``input_ids``, per-text ``position_ids`` (from
    ``first_position``) and the block-diagonal ``attention_mask`` (:func:`packed_attention_mask`; None under
    varlen attention, where the positions alone separate the texts)."""
    mask = None if uses_varlen_attention(config) else packed_attention_mask(config, chunk["segments"], dtype, causal)
    return {
        "input_ids": chunk["input_ids"],
        "position_ids": chunk["position_ids"] + first_position,
        "attention_mask": mask,
    }


def unpack(hidden: Tensor, chunk: Mapping[str, Tensor]) -> Tensor:
    """``(R, L, ...)`` outputs of a packed chunk -> ``(n, T, ...)``: each text's own tokens, padded on the right
    (what ``chunk["attention_mask"]`` marks as real; the rest repeats row 0's first token)."""
    return hidden.reshape(-1, *hidden.shape[2:])[chunk["token_index"]]


def first_position(model: nn.Module) -> int:
    """Position id of a text's first token: ``padding_idx + 1`` for models whose learned position embeddings
    reserve the padding index (RoBERTa, XLM-R: positions count from ``pad_token_id + 1``), else 0."""
    for module in model.modules():
        positions = getattr(module, "position_embeddings", None)
        if isinstance(positions, nn.Embedding):
            return 0 if positions.padding_idx is None else positions.padding_idx + 1
    return 0


def relative_difference(candidate: Tensor, reference: Tensor) -> float:
    """Largest ``|candidate - reference| / |reference|`` over the rows of two ``(N, ...)`` tensors (float32)."""
    candidate, reference = candidate.float().flatten(1), reference.float().flatten(1)
    return ((candidate - reference).norm(dim=-1) / reference.norm(dim=-1).clamp(min=1e-12)).max().item()


def check_tolerance(parameter: Tensor) -> float:
    """Tolerance of a packed-vs-padded check: 1e-3 in float32/64 (rounding only), 5e-2 in 16-bit or quantized."""
    return 1e-3 if parameter.dtype in (torch.float32, torch.float64) else 5e-2


def padding_shares(lengths: Sequence[int], batch_size: int, max_width: int, seed: int, group_by_length: bool = False,
                   batches: int = 200, attention_cost: float = 0.0) -> tuple[float, float]:
    """(padded, packed) expected padding share (padding token slots / all token slots of a forward) of batches of
    ``batch_size`` texts of ``lengths``, drawn as the trainer's sampler draws them (shuffled; sorted buckets of a
    shuffled mega-batch with ``group_by_length``), over at most ``batches`` batches, laid out as :func:`pack_batch`
    lays them (``attention_cost``): what the plan prints."""
    if group_by_length:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(seed)
        order = get_length_grouped_indices(list(lengths), batch_size, generator=generator)
    else:
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
    real = padded = packed = 0
    for start in range(0, min(len(order), batch_size * batches), batch_size):
        batch = sorted((lengths[i] for i in order[start : start + batch_size]), reverse=True)
        real += sum(batch)
        padded += len(batch) * batch[0]
        rows = batch_rows(batch, max_width, attention_cost)
        packed += len(rows) * row_width(rows, batch)
    return 1 - real / max(padded, 1), 1 - real / max(packed, 1)


def packed_attention_mask(config, segments: Tensor, dtype: torch.dtype, causal: bool):
    """The 4D attention mask of packed rows, in the form ``config``'s attention implementation takes (bool for
    SDPA, additive ``dtype`` for eager, a BlockMask for flex): a token attends to the tokens of its own segment
    (padding to padding), and to the earlier ones only when ``causal``. Built by transformers' own masking
    utilities, which the model returns as is."""
    shape_only = torch.empty((*segments.shape, 1), dtype=dtype, device=segments.device)
    same_text = packed_sequence_mask_function(segments)
    if causal:
        return create_causal_mask(
            config=config, inputs_embeds=shape_only, attention_mask=None, past_key_values=None,
            and_mask_function=same_text,
        )  # fmt: skip
    return create_bidirectional_mask(
        config=config, inputs_embeds=shape_only, attention_mask=None, and_mask_function=same_text
    )


def packing_option():
    """The ``packing`` recipe key of the two classifiers (a dataclass field; ``train.embed`` has its own, which also
    sizes its forwards)."""
    return option(
        "Pack the texts of each batch several to a row of one forward (each with its own positions, attention "
        "block-diagonal; position-id varlen rows under FlashAttention): the same batches, outputs, loss and "
        "gradients as padded rows, checked on the model at start, with little padding. Default: on where the "
        "start-up check passes, else padded batches (logged); true makes a failed check an error.",
        default=None,
    )


def decide_packing(
    setting: bool | None, problem: Callable[[], str | None], entrypoint: str, sharded: str | None = None
) -> bool:
    """Whether a run packs, from its ``packing`` key: None -> True when ``problem()`` (the start-up check: None
    when packed outputs equal padded ones, else why not) finds nothing, else False with a warning; True with a
    problem -> ConfigError; False -> False without a check. ``sharded`` (``launch.sharded_forward``): the launch
    shards the parameters, so the check cannot run before training: a problem of its own."""
    if setting is False:
        return False
    if sharded:
        found = f"{sharded} shards the parameters until training starts, so the start-up check cannot run"
    else:
        found = problem()
    if found and setting:
        raise ConfigError(f"packing: true, but {found}. Set packing: false")
    if found:
        logger.warning("%s: packing off (padded batches instead): %s", entrypoint, found)
    return found is None
