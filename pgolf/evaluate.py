"""`pgolf eval`: load a saved artifact into its run's configuration and score it with the run's evaluator
(the final-evaluation phase of `core.train`, on an artifact from disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import export as ex
from core.config import ConfigError
from core.run import Run
from core.scoring import EvalResult, evaluate, prepare_eval
from core.train import set_modes
from plugins.lib.decoders import read_artifact
from validator.untrusted_json import run_dir_recipe


def load_run_config(path: Path) -> tuple[Path, dict[str, Any]]:
    """(artifact path, recipe dict from the run's config.json) for a run dir or an artifact inside one."""

    artifact = path / "final_model.ptz" if path.is_dir() else path
    if not artifact.is_file():
        what = "not a regular file" if artifact.exists() else "artifact not found"
        raise ex.ArtifactError(f"{artifact}: {what} (expected a run directory or a .ptz file)")
    cfg_path = artifact.parent / "config.json"
    if not cfg_path.is_file():
        raise ConfigError([f"{cfg_path}: not found (pgolf eval needs the run's config.json beside the artifact)"])
    try:
        recipe = run_dir_recipe(artifact.parent)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    for key in ("run_id", "out_dir"):
        recipe.get("core", {}).pop(key, None)
    recipe["source"] = str(cfg_path)
    return artifact, recipe


def restored_tensors(artifact: Path, qstate: dict[str, ex.QTensor], schemes: Any) -> dict[str, Any]:
    """Each record of an artifact dequantized; ArtifactError naming the file and the tensor for one whose parts do
    not fit together (a scale of the wrong size, 0-d data, a dtype that cannot hold it: an edited or foreign file)."""
    state = {}
    for name, q in qstate.items():
        try:
            state[name] = q.dequantize(schemes)
        except (RuntimeError, IndexError, TypeError, ValueError) as exc:  # ArtifactError is a ValueError
            raise ex.ArtifactError(f"{artifact}: tensor {name!r}: {' '.join(str(exc).split())[:200]}") from None
    return state


def artifact_tensors(run: Run, artifact: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, header) of an artifact read with the run's codecs and dequantized with its schemes."""
    decoders = ex.decoders_of(run.hook.pg_codec(config=run.config), run.hook.pg_state_codec(config=run.config))
    qstate, header = read_artifact(artifact, decoders)
    return restored_tensors(artifact, qstate, run.schemes), header


def state_mismatch(state: dict[str, Any], mine: dict[str, Any]) -> str | None:
    """How an artifact's tensors differ from a model's state dict (names, then shapes), or None."""
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = [k for k in state if k in mine and tuple(state[k].shape) != tuple(mine[k].shape)]
    if not (missing or extra or shapes):
        return None
    return (f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else
            f"{len(extra)} unexpected tensors (e.g. {extra[0]})" if extra else
            f"shape of {shapes[0]} {tuple(state[shapes[0]].shape)} vs {tuple(mine[shapes[0]].shape)}")


def run_dir_mismatch(run_dir: Path, plugin_files: tuple[str, ...] = ()) -> str | None:
    """How a run directory's artifact differs from the model its config.json builds (on the CPU, no data read),
    or None; ConfigError/ArtifactError/PluginError for a configuration or artifact that does not load."""
    from core.config import resolve
    from core.run import create_run
    from core.train import CoreDefaults, build_model
    from plugins.lib.loading import load_registry

    artifact, recipe = load_run_config(run_dir)
    registry = load_registry(list(plugin_files))
    cfg = resolve(plugin_config_classes=registry.config_classes(), recipe=recipe, env={},
                  check_plugins=registry.check, check_settings=registry.check_settings)
    cfg.core.device, cfg.core.compile = "cpu", False
    run = create_run(cfg, registry, CoreDefaults(), make_dir=False)
    run.schemes = {**ex.SCHEMES, **{k: v for d in run.hook.pg_dequantizers() if d for k, v in d.items()}}
    return state_mismatch(artifact_tensors(run, artifact)[0], build_model(run).state_dict())


def evaluate_artifact(run: Run, artifact: Path) -> EvalResult:
    """Load a saved artifact into the run's model and evaluate it with the run's evaluator."""
    set_modes(run, tuple(m.name for m in run.modes if m.start_frac <= 1.0))
    state, header = artifact_tensors(run, artifact)
    if what := state_mismatch(state, run.model.state_dict()):
        raise ex.ArtifactError(f"{artifact}: does not match this configuration's model: {what} (evaluate it with "
                               "the settings it was trained with: its run's config.json)")
    run.model.load_state_dict(state, strict=True)
    evaluator = run.hook.pg_evaluator(run=run)
    plan = prepare_eval(run, evaluator)
    if run.eval_model is not run.model:
        est = "" if plan.eager_estimate_s is None else f" eager_estimate:{plan.eager_estimate_s:.1f}s"
        run.log(f"eval_warmup:synthetic_tokens mode:{plan.mode} time:{plan.warmup_ms:.0f}ms{est}")
    res = evaluate(run, plan.model, evaluator, run.val_tokens)
    run.log(f"eval artifact:{artifact} quantizer:{header.get('quantizer')} codec:{header.get('codec')} "
            f"evaluator:{evaluator.name}")
    run.log(f"final_eval val_loss:{res.val_loss:.8f} val_bpb:{res.val_bpb:.8f} eval_time:{res.eval_time_ms:.0f}ms "
            f"tokens:{res.tokens} bytes:{res.bytes}")
    return res
