"""Untrusted weight files are never unpickled: a pickle that would run code is refused, and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hssal_ray.errors import ConfigError
from hssal_ray.models import build_model
from hssal_ray.weight_files import load_weights


class _Payload:
    """Unpickling this object calls ``Path.touch(marker)``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_a_weights_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / f"weights{suffix}"
    # a torch checkpoint whose state dict carries an object with a code-running __reduce__
    torch.save({"conv.weight": torch.zeros(1), "extra": _Payload(marker)}, evil, pickle_protocol=2)

    model = build_model("hssal_small_cnn", num_classes=2)
    with pytest.raises(ConfigError, match="cannot read weights file"):
        load_weights(model, evil)
    assert not marker.exists()
