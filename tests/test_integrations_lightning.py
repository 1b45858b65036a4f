"""The README's Lightning example: a LightningModule around a distill method trains a teacher,
then a KD student, and its checkpoints leave the teacher out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_readme import code_after

pytest.importorskip(
    "lightning", reason="lightning is not installed (pip install -e '.[test]' brings it)"
)


def test_readme_lightning_example_trains_a_kd_student(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = code_after("<!-- example:lightning -->")
    monkeypatch.chdir(tmp_path)
    printed: list[Any] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(a))
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert printed[-1][0]["accuracy"] > 0.8, printed[-1]
    # The KD run's checkpoint holds the student only, and loads back into a fresh module.
    checkpoints = sorted(tmp_path.glob("lightning_logs/version_1/checkpoints/*.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=True)["state_dict"]
    student = namespace["student"]
    assert set(state) == {f"method.student.{k}" for k in student.state_dict()}
    module = namespace["Distillation"](namespace["distill"].KD(namespace["teacher"], student))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.zero_()
    module.load_state_dict(state, strict=module.strict_loading)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
