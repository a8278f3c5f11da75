"""The overlap-add engine against direct whole-signal computations."""
import pytest
import torch

from dsu import engine
from dsu.engine import Chunk, Pass, ReflectPad, TensorSignal, grid, linear_fade, run, triangle


def collect(passes, length, **kw):
    blocks = []
    run(passes, length, blocks.append, **kw)
    return torch.cat(blocks, -1), [b.shape[-1] for b in blocks]


def gains(*g):
    """A 'model' whose sources are the input times fixed gains: overlap-add must give exactly that back."""
    return lambda x: torch.stack([k * x for k in g], 1)


@pytest.mark.parametrize("size,step,batch", [(300, 100, 1), (300, 225, 3), (256, 256, 2), (1000, 500, 4)])
def test_linear_models_are_reconstructed_exactly(size, step, batch):
    x = torch.randn(2, 1003)
    out, _ = collect([Pass(gains(1.0, -2.0), TensorSignal(x), grid(1003, size, step, triangle(size)),
                           batch_size=batch)], 1003)
    torch.testing.assert_close(out, torch.stack([x, -2 * x]), atol=1e-5, rtol=0)


def test_output_streams_in_pieces_without_holding_the_whole_timeline():
    x = torch.randn(1, 50_000)
    out, pieces = collect([Pass(gains(1.0), TensorSignal(x), grid(50_000, 1000, 500, triangle(1000)))], 50_000)
    assert len(pieces) > 50 and max(pieces) <= 1000 and sum(pieces) == 50_000
    torch.testing.assert_close(out[0], x, atol=1e-5, rtol=0)


def test_passes_are_normalised_separately_then_mixed_by_source_weight():
    x = torch.randn(2, 2000)
    sig = TensorSignal(x)
    a = Pass(gains(1.0, 2.0), sig, grid(2000, 400, 300, triangle(400)), weight=torch.tensor([1.0, 0.0]))
    b = Pass(gains(3.0, 4.0), sig, grid(2000, 700, 350), weight=torch.tensor([1.0, 1.0]))
    out, _ = collect([a, b], 2000)
    torch.testing.assert_close(out[0], 2 * x, atol=1e-5, rtol=0)  # (1*1 + 3*1) / 2
    torch.testing.assert_close(out[1], 4 * x, atol=1e-5, rtol=0)  # (2*0 + 4*1) / 1


def test_context_outside_the_kept_part_reaches_the_model():
    """A chunk may feed the model more than it keeps (Demucs' padded context)."""
    x = torch.arange(100.0)[None]
    seen = []

    def model(batch):
        seen.append(batch.clone())
        return batch[:, None]

    chunks = [Chunk(start=s - 10, size=40, keep=10, out_start=s, out_size=20, window=torch.ones(20))
              for s in range(0, 100, 20)]
    out, _ = collect([Pass(model, TensorSignal(x), chunks)], 100)
    torch.testing.assert_close(out[0, 0], x[0])
    assert seen[0][0, 0, :10].abs().sum() == 0 and seen[1][0, 0, 0] == 10.0


def test_reflect_pad_matches_torch():
    x = torch.randn(2, 500)
    padded = torch.nn.functional.pad(x[None], (60, 60), mode="reflect")[0]
    sig = ReflectPad(TensorSignal(x), 60)
    for a, b in [(0, 620), (-5, 40), (590, 630), (100, 200), (60, 560), (59, 61), (559, 561)]:
        want = torch.zeros(2, b - a)
        lo, hi = max(a, 0), min(b, 620)
        want[:, lo - a:hi - a] = padded[:, lo:hi]
        torch.testing.assert_close(sig.read(a, b), want)


def test_reflect_tail_mirrors_the_chunk_itself():
    x = torch.randn(1, 150)
    seen = []
    chunk = Chunk(start=100, size=80, keep=0, out_start=100, out_size=50, window=torch.ones(50), reflect_tail=True)
    run([Pass(lambda b: seen.append(b) or b[:, None], TensorSignal(x), [chunk])], 150, lambda blk: None)
    want = torch.nn.functional.pad(x[:, 100:][None], (0, 30), mode="reflect")[0]
    torch.testing.assert_close(seen[0][0], want)


def test_progress_reaches_one_and_cancel_stops_between_batches():
    x = torch.randn(1, 10_000)
    seen = []
    collect([Pass(gains(1.0), TensorSignal(x), grid(10_000, 1000, 500), batch_size=2)], 10_000,
            progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 20  # one per chunk, batched by 2
    calls = []
    with pytest.raises(engine.Cancelled):
        run([Pass(lambda b: calls.append(1) or b[:, None], TensorSignal(x), grid(10_000, 1000, 500))], 10_000,
            lambda blk: None, cancelled=lambda: len(calls) >= 3)
    assert len(calls) == 3


def test_windows():
    w = triangle(6)
    assert w.max() == 1 and w[0] > 0 and torch.equal(w, w.flip(0))
    f = linear_fade(10, 3)
    assert f[0] == 0 and f[-1] == 0 and torch.all(f[3:7] == 1)


def test_streaming_file_shared_by_passes_at_different_offsets(tmp_path):
    """Passes reading one streaming file far apart (like Demucs shifts) must not lose samples."""
    import numpy as np
    import soundfile as sf

    from dsu.audio import FileSignal

    x = np.random.default_rng(0).uniform(-0.5, 0.5, (300_000, 2)).astype(np.float32)
    sf.write(tmp_path / "x.wav", x, 44100, subtype="FLOAT")
    sig = FileSignal(tmp_path / "x.wav")
    n = sig.length
    early = [Chunk(start=s - 7000, size=20_000, keep=7000, out_start=s, out_size=min(13_000, n - s),
                   window=torch.ones(min(13_000, n - s))) for s in range(0, n, 13_000)]
    late = grid(n, 30_000, 20_000, triangle(30_000))
    reflect = ReflectPad(sig, 5000)
    padded = [Chunk(start=s, size=40_000, keep=5000, out_start=s, out_size=min(30_000, n - s),
                    window=torch.ones(min(30_000, n - s))) for s in range(0, n, 30_000)]
    out, _ = collect([Pass(gains(1.0), sig, early, batch_size=2), Pass(gains(1.0), sig, late, batch_size=3),
                      Pass(gains(1.0), reflect, padded)], n)
    torch.testing.assert_close(out[0], torch.from_numpy(x.T), atol=1e-5, rtol=0)
    assert sig._buf.shape[0] < n // 2  # it did forget
