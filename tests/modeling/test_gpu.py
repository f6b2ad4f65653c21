"""The equivalences of the CPU suite, on CUDA: each path against each sequence alone, fp32 and bf16, gradients.

Marked ``gpu``: they run where CUDA is (``python -m pytest -m gpu``) and skip cleanly elsewhere.
``HF_DYNMASK_TEST_DEVICE=cpu`` runs the device-independent ones on the CPU (a check of the tests themselves).

Tolerances (:data:`TOLERANCE`, keyed by device and dtype): fp32 to 1e-5 on CPU and 2e-5 on CUDA (TF32 is off); in
bf16 / fp16, flash-attn's rule: the error of the path against an fp32 reference at most twice the error of the plain
reference computed in the same low precision, plus a small absolute floor.

Paths: the varlen kernel (SDPA length groups, and torch's varlen flash kernel ``kernel="torch_varlen"``, opt-in
until this file has passed on a GPU) against an explicit per-sequence softmax, causal or not, grouped-query, sliding
windows; DynMask's encoder (dynamic and packed, every CUDA backend the README lists: sdpa, dynmask_varlen, eager,
flash_attention_2 where flash-attn is installed) against stock BERT; a stock grouped-query Llama on dynmask_varlen,
packed, against each sequence alone, gradients included.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask.modeling.attention import plan_varlen, repeat_kv, varlen_attention
from hf_dynmask.modeling.layout import cu_seqlens_from_seq_lens, position_ids_from_cu_seqlens

pytestmark = pytest.mark.gpu

LENS = [1, 7, 33, 128, 64, 3, 90]
#: (device type, dtype) -> absolute tolerance for fp32 comparisons; low precision uses flash-attn's rule.
TOLERANCE = {("cpu", torch.float32): 1e-5, ("cuda", torch.float32): 2e-5}
LOW_PRECISION_FLOOR = 1e-3


@pytest.fixture(scope="module")
def device() -> torch.device:
    wanted = os.environ.get("HF_DYNMASK_TEST_DEVICE")
    if wanted == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (set HF_DYNMASK_TEST_DEVICE=cpu to check these tests on the CPU)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")


def reference(q, k, v, lens_q, lens_k, *, causal=False, window=None, scaling, upcast=True):
    """Each sequence alone, explicit softmax: ``(Nq, H, D)``, in float32 (``upcast``) or in the inputs' dtype (the
    low-precision reference of flash-attn's rule)."""
    out, start_q, start_k = [], 0, 0
    groups = q.shape[1] // k.shape[1]
    cast = (lambda t: t.float()) if upcast else (lambda t: t)  # noqa: E731
    for lq, lk in zip(lens_q, lens_k, strict=True):
        qs = cast(q[start_q : start_q + lq]).transpose(0, 1)  # (H, lq, D)
        ks, vs = (repeat_kv(cast(t[start_k : start_k + lk]).transpose(0, 1)[None], groups)[0] for t in (k, v))
        scores = qs @ ks.transpose(-1, -2) * scaling
        q_pos = torch.arange(lk - lq, lk, device=q.device)[:, None]
        distance = q_pos - torch.arange(lk, device=q.device)[None, :]
        allowed = distance >= 0 if causal else torch.ones_like(distance, dtype=torch.bool)
        if window is not None:
            allowed &= distance.abs() < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        out.append((scores.softmax(-1).nan_to_num() @ vs).transpose(0, 1))
        start_q, start_k = start_q + lq, start_k + lk
    return torch.cat(out)


def assert_matches(got, expected_fp32, expected_low, device, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(got.float(), expected_fp32, atol=TOLERANCE[(device.type, dtype)], rtol=0)
        return
    allowed = 2 * (expected_low.float() - expected_fp32).abs().max().item() + LOW_PRECISION_FLOOR
    error = (got.float() - expected_fp32).abs().max().item()
    assert error <= allowed, f"error {error:.2e} > 2 x the {dtype} reference's error + floor = {allowed:.2e}"


def kernels(device: torch.device, dtype: torch.dtype) -> list[str]:
    names = ["sdpa", "eager"]
    if device.type == "cuda" and dtype != torch.float32:
        names.append("torch_varlen")  # flash: half precision on CUDA only
    return names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal, window", [(False, None), (True, None), (True, 16), (False, 16)])
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_kernel_against_each_sequence_alone(device, dtype, causal, window, kv_heads):
    generator = torch.Generator().manual_seed(0)
    n = sum(LENS)
    q = torch.randn(n, 4, 64, generator=generator).to(device)
    k, v = (torch.randn(n, kv_heads, 64, generator=generator).to(device) for _ in range(2))
    scaling = 64**-0.5
    expected = reference(q, k, v, LENS, LENS, causal=causal, window=window, scaling=scaling)
    low = reference(
        q.to(dtype), k.to(dtype), v.to(dtype), LENS, LENS, causal=causal, window=window, scaling=scaling, upcast=False
    )
    plan = plan_varlen(cu_seqlens_from_seq_lens(LENS).to(device))
    for kernel in kernels(device, dtype):
        qd, kd, vd = (t.to(dtype).detach().requires_grad_() for t in (q, k, v))
        got = varlen_attention(
            qd, kd, vd, plan, scaling=scaling, is_causal=causal, sliding_window=window, kernel=kernel
        )
        assert_matches(got, expected, low, device, dtype)
        got.float().sum().backward()  # gradients: finite, and (fp32) those of the reference
        assert all(torch.isfinite(t.grad).all() for t in (qd, kd, vd)), kernel
        if dtype == torch.float32:
            qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
            reference(qr, kr, vr, LENS, LENS, causal=causal, window=window, scaling=scaling).sum().backward()
            for mine, theirs in ((qd, qr), (kd, kr), (vd, vr)):
                torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cross_attention_and_cache_alignment(device, dtype):
    """Different query and key lengths (cross-attention; queries over a cache, bottom-right causal)."""
    lens_q, lens_k = [3, 1, 20, 7], [9, 4, 20, 30]
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(sum(lens_q), 4, 64, generator=generator).to(device)
    k, v = (torch.randn(sum(lens_k), 4, 64, generator=generator).to(device) for _ in range(2))
    plan = plan_varlen(cu_seqlens_from_seq_lens(lens_q).to(device), cu_seqlens_from_seq_lens(lens_k).to(device))
    for causal in (False, True):
        expected = reference(q, k, v, lens_q, lens_k, causal=causal, scaling=0.125)
        low = reference(
            q.to(dtype), k.to(dtype), v.to(dtype), lens_q, lens_k, causal=causal, scaling=0.125, upcast=False
        )
        for kernel in kernels(device, dtype):
            got = varlen_attention(q.to(dtype), k.to(dtype), v.to(dtype), plan, scaling=0.125, is_causal=causal,
                                   kernel=kernel)  # fmt: skip
            assert_matches(got, expected, low, device, dtype)


def _backends(device: torch.device) -> list[str]:
    names = ["sdpa", "dynmask_varlen", "eager"]
    if device.type == "cuda":
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            names.append("flash_attention_2")
    return names


@pytest.mark.parametrize("layout", ["dynamic", "packed"])
def test_dynmask_encoder_against_stock_bert(device, layout):
    from transformers import BertConfig, BertModel

    from hf_dynmask import DynMaskModel

    from .test_modeling_dynmask import dynmask_like, model_inputs, real_tokens, sequences

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=256,
    )  # fmt: skip
    bert = BertModel._from_config(config, attn_implementation="eager").to(device).eval()
    seqs = [s.to(device) for s in sequences(LENS)]
    ref_inputs = {k: v.to(device) for k, v in model_inputs(seqs, "dynamic").items()}
    with torch.no_grad():
        expected = real_tokens(bert(**ref_inputs).last_hidden_state, ref_inputs)
    for backend in _backends(device):
        dtype = torch.bfloat16 if backend.startswith("flash") else torch.float32
        model = dynmask_like(bert, DynMaskModel, "dynamic", backend).to(device, dtype)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(seqs, layout).items()}
        with torch.no_grad():
            got = real_tokens(model(**inputs).last_hidden_state.float(), inputs)
        atol = TOLERANCE[(device.type, torch.float32)] if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got, expected, atol=atol, rtol=0, msg=backend)


def test_stock_llama_packed_against_each_sequence_alone(device):
    """Packed rows on dynmask_varlen, outputs and parameter gradients, fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=256, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    stock = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device).train()
    varlen = copy.deepcopy(stock)
    varlen.set_attn_implementation("dynmask_varlen")
    generator = torch.Generator().manual_seed(2)
    seqs = [torch.randint(3, 100, (n,), generator=generator).to(device) for n in LENS]
    alone = torch.cat([stock(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
    weights = torch.randn(alone.shape, generator=torch.Generator().manual_seed(3)).to(device)
    (alone * weights).sum().backward()
    cu = cu_seqlens_from_seq_lens(LENS).to(device)
    packed = varlen(
        input_ids=torch.cat(seqs)[None], position_ids=position_ids_from_cu_seqlens(cu)[None], cu_seq_lens_q=cu,
        cu_seq_lens_k=cu, use_cache=False,
    ).logits[0]  # fmt: skip
    atol = TOLERANCE[(device.type, torch.float32)]
    torch.testing.assert_close(packed, alone, atol=atol, rtol=0)
    (packed * weights).sum().backward()
    for (name, p_ref), (_, p) in zip(stock.named_parameters(), varlen.named_parameters(), strict=True):
        scale = max(1.0, p_ref.grad.abs().max().item())
        torch.testing.assert_close(p.grad, p_ref.grad, atol=10 * atol * scale, rtol=1e-4, msg=name)
