"""Loading torch networks for the EDM and flow adapters: file lookup, format detection, device moves.

A network file is either a TorchScript archive (``torch.jit.save``) of F(x, c) -> tensor, or a
diffbench-unet checkpoint (models/unet.py). A bare name that is not a file is looked up in the
package's ``diffbench/assets/`` folder, then in the diffbench cache's ``weights/`` folder.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbench import warmup
from diffbench.assetstore import PACKAGE_ASSETS, weights_dir
from diffbench.errors import AssetMissing, UsageError, check, first_line
from diffbench.models.unet import build_from_checkpoint, is_checkpoint

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
EXTRA_FILE = "diffbench.json"
FORMATS = ("a TorchScript archive of F(x, c) (torch.jit.save)", "a diffbench-unet checkpoint (scripts/train.py)")


def parse_dtype(name: str) -> torch.dtype:
    """A model.dtype option as a torch dtype."""
    check(name in DTYPES, f"model.dtype '{name}' is unknown; use one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_file(path: str, expected: str) -> Path:
    """model.path as given, else under diffbench/assets/, else under the cache's weights/ folder."""
    check(bool(path), f"model.path is empty; set it to {expected}")
    given = Path(path).expanduser()
    if given.is_file():
        return given
    places = [PACKAGE_ASSETS / path, weights_dir() / path] if not given.is_absolute() else []
    for candidate in places:
        if candidate.is_file():
            return candidate
    where = " or ".join(str(p) for p in [given, *places])
    raise AssetMissing(f"model.path={path}: no such file ({where}); expected {expected}")


def load_network(path: str, expected: str = " or ".join(FORMATS)) -> tuple[nn.Module, dict[str, Any]]:
    """(network, checkpoint fields) from a TorchScript archive or a diffbench-unet checkpoint.

    A TorchScript archive's fields (``shape``, ``precond``) come from its optional extra file
    ``diffbench.json`` (``torch.jit.save(..., _extra_files={"diffbench.json": ...})``), else are empty.
    NVlabs' EDM ``.pkl`` files pickle their classes' code and need NVlabs' source to unpickle; convert
    them once with ``scripts/export_edm.py``.
    """
    file = resolve_file(path, expected)
    check(file.suffix != ".pkl", f"model.path={file}: NVlabs pickles need NVlabs/edm's source to load; convert it "
          "to TorchScript once with `PYTHONPATH=/path/to/edm python scripts/export_edm.py IN.pkl OUT.pt`")
    if _is_torchscript(file):
        extra = {EXTRA_FILE: ""}
        try:
            module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra).eval()
            return module, json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}
        except (RuntimeError, ValueError) as e:
            raise UsageError(f"model.path={file}: unreadable TorchScript archive ({first_line(e)})") from None
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError) on bad files
        why = ("it pickles Python objects, and diffbench loads weights only" if "Weights only load failed" in str(e)
               else first_line(e))
        raise UsageError(f"model.path={file}: not a loadable checkpoint ({why}); expected {expected}") from None
    check(is_checkpoint(ckpt), f"model.path={file}: a torch file, but not {expected}")
    missing = [key for key in ("arch", "state_dict", "precond", "shape") if key not in ckpt]
    check(not missing, f"model.path={file}: diffbench-unet checkpoint lacks {', '.join(missing)}")
    try:
        return build_from_checkpoint(ckpt), ckpt
    except (TypeError, RuntimeError) as e:
        raise UsageError(f"model.path={file}: weights do not fit the UNet its 'arch' describes "
                         f"({first_line(e)})") from None


def save_traced(net: nn.Module, inputs: Callable[[int], tuple[Tensor, ...]], fields: dict[str, Any], out: Path,
                source: str) -> None:
    """Trace a raw network and write it with its fields, as load_network reads it; the trace is checked on new inputs.

    inputs(batch) draws one set of example inputs; the trace is made at batch 2 and must hold at batch 3.
    """
    traced = torch.jit.trace(net, inputs(2))
    check_inputs = inputs(3)
    err = float((traced(*check_inputs) - net(*check_inputs)).abs().max())
    if err > 1e-4:
        raise SystemExit(f"{source}: the traced network differs from the original by {err:.2e}; not exported")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out), _extra_files={EXTRA_FILE: json.dumps(fields)})


def _is_torchscript(file: Path) -> bool:
    """TorchScript archives are zip files with a code/ folder (torch.save zips have none)."""
    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as z:
        return any("/code/" in name for name in z.namelist())


def checkpoint_shape(fields: dict[str, Any], shape: Sequence[int] | None, path: str) -> tuple[int, ...]:
    """The sample shape: model.shape if given, else the checkpoint's; TorchScript files need model.shape."""
    if shape is None:
        check("shape" in fields, f"model.path={path} does not record its sample shape; set model.shape=[C,H,W]")
        shape = fields["shape"]
    return tuple(int(s) for s in shape)


def precond_of(fields: dict[str, Any], kind: str, what: str, path: str) -> dict[str, Any]:
    """The checkpoint's preconditioning entry (default: `kind`); another kind is a one-line error naming it."""
    precond = fields.get("precond", {"kind": kind})
    found = precond.get("kind")
    check(found == kind, f"model.path={path} is a '{found}' checkpoint, not {what}; use model kind '{found}'")
    return precond


def option(value: float | None, precond: dict[str, Any], key: str, default: float) -> float:
    """A model option: the config's value if set, else the checkpoint's precond entry, else the default."""
    return float(precond.get(key, default) if value is None else value)


class TorchNet:
    """Runs a module without gradients in its dtype, moved to the input's device on first use.

    No autograd graph is kept (torch.no_grad), but forward-mode derivatives pass through: DPM-Solver-v3's
    EMS take torch.func.jvp of the network (inference mode would drop or refuse them).

    The noise label c is passed in float32 (as EDM does), whatever the module's dtype. Speed options
    (recorded in every row through the model config): channels_last memory format for 4-D inputs, and
    torch.compile with a mode name ("default", "reduce-overhead" = CUDA graphs, "max-autotune").
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype, channels_last: bool = False,
                 compile: bool | str = False):
        check(compile in (False, True) or compile in COMPILE_MODES,
              f"model.compile must be false, true or one of {', '.join(COMPILE_MODES)} (got {compile!r})")
        check(not (compile and isinstance(module, torch.jit.ScriptModule)),
              "model.compile needs an eager network (a diffbench-unet checkpoint or diffusers model); "
              "a TorchScript archive is already compiled")
        self.module, self.dtype = module.to(dtype).eval(), dtype
        self.device: torch.device | None = None  # placed (and compiled) on the first call's device, CPU included
        self.channels_last, self.compile = bool(channels_last), compile
        self.forward: Callable[..., Tensor] = self.module
        self.shapes: set[tuple[tuple[int, ...], ...]] = set()  # input shapes compiled so far (warm-up timed)

    def __call__(self, x: Tensor, c: Tensor, *cond: Tensor) -> Tensor:
        """F(x, c, *cond); conditioning tensors (labels, text embeddings) move to x's device, floats to the dtype."""
        if x.device != self.device:
            self._place(x.device)
        dtype, x = x.dtype, x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        cond = tuple(v.to(x.device, self.dtype if v.is_floating_point() else v.dtype) for v in cond)
        shape = (tuple(x.shape), *(tuple(v.shape) for v in cond))
        with torch.no_grad():
            if not self.compile or shape in self.shapes:
                return self.forward(x, c.float(), *cond).to(dtype).contiguous()
            with warmup.timed(x.device):  # the first call at a new shape compiles its graph
                out = self.forward(x, c.float(), *cond).to(dtype).contiguous()
            self.shapes.add(shape)
            return out

    def _place(self, device: torch.device) -> None:
        """Move the module (and its memory format) to the device; compile it there if asked."""
        self.module, self.device = self.module.to(device), device
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.forward, self.shapes = self.module, set()
        if self.compile:
            mode = "default" if self.compile is True else self.compile
            self.forward = torch.compile(self.module, mode=mode, dynamic=False)
