"""Per-request token choice and incremental detokenization, for the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from serving.worker.slots import Request


def sample(reqs: list[Request], logits: torch.Tensor) -> torch.Tensor:
    """The next token of each row: greedy, or drawn with the request's temperature, top-p and seed."""
    # bf16 argmax on CPU: 3.6x slower than the copy; float32 argmax over 32 x 49152 logits 1.9 ms, max 1.1 ms
    # (both give the first index of the maximum)
    tokens = logits.float().max(-1).indices
    for i, r in enumerate(reqs):
        if r.params.temperature > 0:
            probs = torch.softmax(logits[i].float() / r.params.temperature, -1)
            if r.params.top_p < 1:
                sorted_p, order = probs.sort(descending=True)
                cut = sorted_p.cumsum(-1) - sorted_p > r.params.top_p  # keep the smallest nucleus
                sorted_p[cut] = 0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            tokens[i] = torch.multinomial(probs.cpu(), 1, generator=r.generator).to(tokens.device)[0]
    return tokens


def detokenize(tokenizer: Any, req: Request, final: bool) -> None:
    """Append the text of tokens not yet decoded: decode from the last complete boundary (so merges
    and leading spaces come out as in a full decode) and keep back an unfinished UTF-8 character."""
    ids = req.out_ids
    prefix = tokenizer.decode(ids[req._prefix : req._read], skip_special_tokens=True) if req._read > req._prefix else ""
    new = tokenizer.decode(ids[req._prefix :], skip_special_tokens=True)
    if len(new) > len(prefix) and (final or not new.endswith("\ufffd")):
        req.text += new[len(prefix) :]
        req._prefix, req._read = req._read, len(ids)
