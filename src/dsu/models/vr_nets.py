"""Which VR network a UVR `.pth` state dict is, read from its keys and shapes.

UVR picks the network by file size (nearest of its size classes) or by `nout`/`nout_lstm` in the model
data; DSU reads the same facts from the weights themselves, so any size works (tiny test models,
re-saved or pruned files) and a file that fits no layout is a clear `config_mismatch`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

from torch import Tensor, nn

from dsu.errors import DSUError, listed, state_differences
from dsu.models.vr_cascade import SIZE_CLASSES, CascadedASPPNet
from dsu.models.vr_cascade_v51 import CascadedNetV51

V51_MARK = "stg3_full_band_net.lstm_dec2.lstm.weight_ih_l0"  # [4 * hidden, rows]
V50_MARK = "stg1_low_band_net.enc1.conv1.conv.0.weight"  # [channels, 2, 3, 3]
V50_LAYOUTS = {(extra, depth) for _, extra, depth in SIZE_CLASSES.values()}


def build_vr_net(state: Mapping[str, Tensor], bins: int, nout: int | None = None,
                 nout_lstm: int | None = None) -> CascadedASPPNet | CascadedNetV51:
    """The network for `state` (UVR's v5.0 CascadedASPPNet or v5.1 CascadedNet) with `state` loaded
    strictly, in eval mode. `bins`: the band parameters' bins. `nout`/`nout_lstm` (UVR's model data)
    mark a v5.1 model and must agree with the weights."""
    model: CascadedASPPNet | CascadedNetV51
    if V51_MARK in state and state[V51_MARK].dim() == 2:
        model = _v51(state, bins, nout, nout_lstm)
    elif V50_MARK in state and state[V50_MARK].dim() == 4:
        if nout is not None or nout_lstm is not None:
            _mismatch(f"the model data gives nout/nout_lstm ({nout}/{nout_lstm}), which marks a v5.1 network, "
                      "but the file holds a v5.0 (nets.py) network; remove nout/nout_lstm or check the model file")
        model = _v50(state, bins)
    else:
        _mismatch(f"the file is not a UVR VR-architecture network (neither {V50_MARK!r} nor {V51_MARK!r} "
                  "is among its keys); check that it is a VR model and not an MDX-Net or other model")
    _check_layout(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _v50(state: Mapping[str, Tensor], bins: int) -> CascadedASPPNet:
    channels = state[V50_MARK].shape[0]
    extra = sum(f"stg1_low_band_net.aspp.conv{n}.conv.0.weight" in state for n in (6, 7))
    depth = 5 if "stg1_low_band_net.enc5.conv1.conv.0.weight" in state else 4
    if (extra, depth) not in V50_LAYOUTS or channels % 2:
        _mismatch(f"the v5.0 network has {channels} channels, {5 + extra} ASPP branches and depth {depth}, "
                  "which is none of UVR's layouts; check that the file is an unmodified UVR VR model")
    _check_bins(bins, depth)
    return CascadedASPPNet(bins, channels, extra, depth)


def _v51(state: Mapping[str, Tensor], bins: int, nout: int | None, nout_lstm: int | None) -> CascadedNetV51:
    out = state.get("out.weight")
    file_nout = out.shape[1] if out is not None and out.dim() == 4 else None
    file_nout_lstm = 2 * state[V51_MARK].shape[0] // 4  # 4 gates x hidden, hidden = nout_lstm // 2
    for name, given, found in (("nout", nout, file_nout), ("nout_lstm", nout_lstm, file_nout_lstm)):
        if given is not None and given != found:
            _mismatch(f"the model data gives {name}={given} but the v5.1 network in the file has {name}={found}; "
                      f"set {name} to {found} or check the model data")
    rows = state[V51_MARK].shape[1]
    if rows != bins // 2:
        _mismatch(f"the v5.1 network was trained for band parameters with bins={2 * rows} (or {2 * rows + 1}), "
                  f"not bins={bins}; check vr_model_param (the band-parameter file)")
    _check_bins(bins, 4)
    return CascadedNetV51(bins, file_nout or nout or 32, file_nout_lstm)


def _check_bins(bins: int, depth: int) -> None:
    # each half of the frequency axis is halved `depth` times and the decoders double it back
    step = 2 ** (depth + 1)
    if bins % step:
        _mismatch(f"bins={bins} does not fit this network, which needs a multiple of {step}; "
                  "check vr_model_param (the band-parameter file)")


def _check_layout(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    missing, unexpected, wrong = state_differences(model.state_dict(), state)
    if missing or unexpected or wrong:
        parts = [f"{label}: {listed(items, 4)}" for label, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if items]
        _mismatch(f"the VR network in the file does not fit the {type(model).__name__} layout it resembles "
                  f"({'; '.join(parts)}); check that the file is an unmodified UVR VR model, and "
                  "vr_model_param/nout/nout_lstm")


def _mismatch(message: str) -> NoReturn:
    raise DSUError("config_mismatch", message)
