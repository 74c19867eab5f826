"""Greedy LLaMA decoding over a preallocated KV cache, one CUDA graph per generated token.

Why: LISA's answer is a handful of tokens ("Sure, [SEG]."), and each decoding step of a 7B model in
eager PyTorch launches about a thousand small kernels. On the GPU machines that is launch-bound
(about 27 ms per step for one view, 42 ms for four, against a few ms of weight reads), so the step
is captured once as a CUDA graph and replayed. A graph needs fixed shapes and addresses, hence this
module's own cache: keys and values of every layer in one buffer of ``capacity`` positions, the
new token written at a position held in a device tensor, attention over the whole buffer with the
positions not yet written masked out.

The arithmetic is LLaMA's, step for step as in ``transformers``' ``LlamaModel`` (RMSNorm,
rotary embedding with ``rotate_half``, attention, SwiGLU MLP, residuals), reusing the model's own
modules for everything but the cache and the attention call; tests/test_lisa.py checks prefill
and steps against the model's forward pass on CPU, where no graph is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - PyTorch's convention
from torch import nn

#: Positions of the cache are allocated in multiples of this, so queries of similar length share one
#: captured graph instead of capturing per prompt length.
CAPACITY_STEP = 64


def round_capacity(positions: int) -> int:
    """``positions`` rounded up to a multiple of :data:`CAPACITY_STEP`."""
    return -(-int(positions) // CAPACITY_STEP) * CAPACITY_STEP


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticDecoder:
    """Prefill then step-by-step decoding of ``batch`` rows with a fixed-capacity KV cache.

    ``llama`` is the ``LlamaModel`` (``LlamaForCausalLM.model``). ``use_graph`` captures the step as
    a CUDA graph on first use (CUDA only; CPU runs the same code eagerly).
    """

    def __init__(self, llama: nn.Module, batch: int, capacity: int, use_graph: bool) -> None:
        cfg = llama.config
        self.llama = llama
        self.batch = batch
        self.capacity = round_capacity(capacity)
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        w = llama.embed_tokens.weight
        self.device, self.dtype = w.device, w.dtype
        n_layers = cfg.num_hidden_layers
        shape = (n_layers, batch, self.kv_heads, self.capacity, self.head_dim)
        self.keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.values = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.use_graph = use_graph and self.device.type == "cuda"
        self.length = 0  # positions written
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)  # the step's position
        self._tok = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._out: torch.Tensor | None = None
        self._graph: torch.cuda.CUDAGraph | None = None

    # ------------------------------------------------------------------ one layer
    def _attend(self, layer: nn.Module, i: int, x: torch.Tensor, cos, sin, prefill: bool) -> torch.Tensor:
        """Self-attention of layer ``i`` for ``x`` (B, T, H); writes its keys/values into the cache.

        ``prefill``: ``x`` is the prompt from position 0 (causal attention over it); otherwise one
        step at the position held in ``self._pos`` (a device tensor).
        """
        att = layer.self_attn
        b, t, _ = x.shape
        q = att.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = att.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = att.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        if prefill:
            self.keys[i, :, :, :t] = k
            self.values[i, :, :, :t] = v
            kk, vv = k, v
            if rep > 1:
                kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
            out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=att.scaling)
        else:
            self.keys[i].index_copy_(2, self._pos, k)
            self.values[i].index_copy_(2, self._pos, v)
            kk, vv = self.keys[i], self.values[i]
            if rep > 1:
                kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
            mask = (torch.arange(self.capacity, device=x.device) <= self._pos).view(1, -1)  # (1, capacity)
            out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=att.scaling)
        out = out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return att.o_proj(out)

    def _forward(self, x: torch.Tensor, position_ids: torch.Tensor, prefill: bool) -> torch.Tensor:
        """LLaMA's decoder stack on ``x`` (B, T, H); the last position's final-norm hidden state."""
        cos, sin = self.llama.rotary_emb(x, position_ids=position_ids)
        for i, layer in enumerate(self.llama.layers):
            x = x + self._attend(layer, i, layer.input_layernorm(x), cos, sin, prefill)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.llama.norm(x[:, -1])

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def prefill(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, T, H); returns the last position's final hidden state (B, H)."""
        b, t, _ = inputs_embeds.shape
        if b != self.batch or t >= self.capacity:
            raise ValueError(f"prefill of {b}x{t} does not fit a {self.batch}x{self.capacity} decoder")
        pos = torch.arange(t, device=self.device).unsqueeze(0)
        h = self._forward(inputs_embeds.to(self.dtype), pos, prefill=True)
        self.length = t
        return h

    def _step_impl(self) -> torch.Tensor:
        x = self.llama.embed_tokens(self._tok).unsqueeze(1)
        return self._forward(x, self._pos.view(1, 1), prefill=False)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,); returns the new final hidden state (B, H)."""
        if self.length >= self.capacity:
            raise ValueError(f"the decoder's cache of {self.capacity} positions is full")
        self._tok.copy_(tokens)
        self._pos.fill_(self.length)
        if not self.use_graph:
            out = self._step_impl()
        else:
            if self._graph is None:
                self._capture()
            self._graph.replay()
            out = self._out.clone()
        self.length += 1
        return out

    def _capture(self) -> None:
        """Warm up on a side stream (as CUDA graph capture requires), then capture one step."""
        keys, values = self.keys.clone(), self.values.clone()  # the warm-up writes at the position
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step_impl()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self._step_impl()
        self.keys.copy_(keys)
        self.values.copy_(values)
