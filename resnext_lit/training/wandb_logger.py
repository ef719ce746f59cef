"""Weights & Biases tracking: Lightning's WandbLogger, named the paper's way, never hanging.

    python -m resnext_lit fit --config configs/demo.yaml --config configs/logger/wandb.yaml
    WANDB_ENTITY=my-team python -m resnext_lit fit --config configs/imagenet_paper.yaml \
        --config configs/logger/wandb.yaml --model.arch=resnext101_64x4d
    wandb sync runs/demo/<run_id>/wandb/offline-run-*   # upload a run logged offline

`configs/logger/wandb.yaml` appends this logger after the recipe's CSVLogger; the CLI gives it
the run's name, id (`resume="allow"`: one W&B run however often the run resumes) and folder
(`resnext_lit.training.run`). On top of Lightning's logger it adds:

- project `resnext-lit` (or WANDB_PROJECT); entity from WANDB_ENTITY or `init_args.entity`;
- group `<dataset>/<recipe>/<network>` (e.g. `cifar100/cifar_paper/resnext29_8x64d`) so W&B
  averages the seeds of one setting, and tags (arch, depth, C x d, form, recipe, dataset), set
  by `describe_run` before the W&B run starts;
- in the run config: the resolved CLI config, params and MACs (as the paper counts them),
  dataset, network, planned epochs, the `scale` block (world size, per-device and global batch,
  accumulation, lr after scaling) and `resolution`, as in results.json; hardware and library
  versions, the run's id and name; every metric the module logs goes to the run;
- in the summary: `val/top1_err` and `val/top5_err` as {"min", "last"} over the whole run,
  its earlier epochs read from the run's results.json on a resume;
- a start that cannot block training: offline, said in one line with the `wandb sync` command,
  when there are no credentials, when the server does not accept a connection within
  `PROBE_S`, or when an online `wandb.init` fails within `init_timeout`;
- checkpoints uploaded as artifacts only when asked (`log_model`) and online.

Lightning already restricts the run and all logging to global rank 0 under DDP.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from ..facts import (
    code_version,
    counted_at,
    counted_network,
    dataset_name,
    environment,
    resolution,
    training_limits,
)
from ..models import model_config, model_entry, registered_name
from ..models.registry import OVERRIDES
from ..wandb_access import PROBE_S, has_credentials, reachable

DEFAULT_PROJECT = "resnext-lit"
# wandb.init adds up to ~10 s of its own (two 5 s identity look-ups) to its init_timeout; with
# the probe and the offline restart, the worst case stays under 30 s.
INIT_TIMEOUT_S = 12.0
OFFLINE_MODES = ("offline", "dryrun")
SUMMARY_MIN = ("val/top1_err", "val/top5_err")  # summarized as {"min", "last"} over the run


def run_labels(arch: str, depth: int, cardinality: int, bottleneck_width: int, form: str,
               recipe: str | None = None, dataset: str | None = None) -> tuple[str, list[str]]:
    """(group, tags) of a run, e.g. ("cifar100/cifar_paper/resnext29_8x64d", [...]).

    The group names the setting, not the seed, so W&B's grouped view is the paper's mean over
    runs of one dataset, recipe and network (Table 7's CIFAR-10 and CIFAR-100 runs of one arch
    are two groups). A run whose overrides build a registered network is grouped under that
    network ("resnext50_32x4d" with C=8, d=14 is "resnext50_8x14d"); any other override gets
    what it really is appended ("resnext29_8x64d-2x2d"), so a shrunk network never averages
    with the paper's (the CPU demo's network is registered on its own: `resnext11_8x4d`).
    """
    name = network_name(arch, depth, cardinality, bottleneck_width)
    group = "/".join(part for part in (dataset, recipe, name) if part)
    tags = [arch, f"depth{depth}", f"{cardinality}x{bottleneck_width}d", f"form-{form}"]
    return group, tags + [part for part in (recipe, dataset) if part]


def network_name(arch: str, depth: int, cardinality: int, bottleneck_width: int) -> str:
    """The registered name of the network a run really built, else `arch` + what differs."""
    registered = registered_name(depth, cardinality, bottleneck_width)
    if registered:
        return registered
    entry = model_entry(arch)
    name = arch + (f"-{depth}layers" if depth != entry["depth"] else "")
    if (cardinality, bottleneck_width) != (entry["cardinality"], entry["bottleneck_width"]):
        name += f"-{cardinality}x{bottleneck_width}d"
    return name


def run_facts(arch: str, net_config: dict, image_size: int, recipe: str | None = None,
              dataset: str | None = None) -> tuple[str, list[str], dict]:
    """(group, tags, config facts) of one run of `arch` built with `net_config`."""
    network = counted_network(net_config, image_size)  # the same facts as results.json's
    depth, c, d = network["depth"], network["cardinality"], network["bottleneck_width"]
    group, tags = run_labels(arch, depth, c, d, network["form"], recipe, dataset)
    hardware, versions = environment()
    facts = {"arch": arch, "network": network_name(arch, depth, c, d), "recipe": recipe,
             "dataset": dataset, **network, "hardware": hardware, "versions": versions}
    return group, tags, facts


def describe_run(trainer, module, datamodule=None, recipe: str | None = None,
                 config: dict | None = None, stage: str = "fit", run: dict | None = None) -> None:
    """Hand every `WandbLogger` of `trainer` the run's group, tags and config: the same facts
    as results.json (dataset, planned epochs, `scale`, `resolution`), so tables agree.

    Call it before `trainer.fit` (the CLI does, in `before_fit`): Lightning starts the W&B run
    in its setup hook, before any callback could name it, and a W&B group is fixed at start.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if loggers:
        from .scale import run_scale

        data = datamodule or trainer.datamodule
        dataset = dataset_name(data, module.hparams.num_classes)
        group, tags, facts = run_facts(module.hparams.arch, module.model.config,
                                       counted_at(data), recipe, dataset)
        facts.update(stage=stage, **training_limits(trainer), code=code_version(),
                     run_id=(run or {}).get("id"), run_name=(run or {}).get("name"),
                     scale=run_scale(trainer, data, module.hparams.lr)
                     if getattr(data, "batch_size", None) else None,
                     resolution=resolution(data, trainer))
        for logger in loggers:
            logger.describe(group, tags, {**(config or {}), **facts}, facts)


def _best_so_far(record_path: Path) -> dict[str, float]:
    """The lowest SUMMARY_MIN values of a resumed run's earlier epochs (its results.json)."""
    try:
        epochs = json.loads(record_path.read_text()).get("epochs") or []
    except (OSError, ValueError):
        return {}
    return {key: min(e[key] for e in epochs if key in e)
            for key in SUMMARY_MIN if any(key in e for e in epochs)}


class WandbLogger(_LightningWandbLogger):
    """Lightning's `WandbLogger` with this project's defaults and a start that cannot hang.

    Use from YAML (see configs/logger/wandb.yaml):
    `{class_path: resnext_lit.training.wandb_logger.WandbLogger, init_args: {save_dir: runs}}`.

    Args:
        project: W&B project; default WANDB_PROJECT, else "resnext-lit".
        entity: W&B team or user; default WANDB_ENTITY, else the account's default.
        group, tags: override the ones `describe_run` derives from the run.
        save_dir: where wandb writes `wandb/<run>` (offline runs wait there for `wandb sync`).
        offline: never try the network.
        log_model: upload checkpoints as artifacts (online only; see Lightning's docs).
        init_timeout: seconds an online `wandb.init` may take before falling back to offline.
        **kwargs: any other `wandb.init` argument (`settings` as a dict).

    Lightning's logger keeps its state in private attributes, which this subclass reads and
    sets (checked against lightning 2.6.6; tests/test_internals.py fails if they change):
    `_wandb_init` (the `wandb.init` arguments, filled in by `describe` before the start),
    `_experiment` (the started run), `_log_model` and `_attach_id` (set in a DDP child that
    unpickled the logger of a started run).
    """

    def __init__(self, project: str | None = None, entity: str | None = None,
                 name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, save_dir: str = "runs", offline: bool = False,
                 log_model: bool | str = False, init_timeout: float = INIT_TIMEOUT_S,
                 **kwargs):
        project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        # Lightning refuses offline + log_model; here offline may be decided later, at start.
        super().__init__(name=name, save_dir=save_dir, project=project, log_model=log_model,
                         entity=entity, group=group, tags=tags, **kwargs)
        self._force_offline = offline
        self._init_timeout = init_timeout
        self._user_labels = {"group": group, "tags": tags}
        self.mode: str | None = None  # "online", "offline" or "disabled" once started
        self._facts: dict | None = None  # arch, C, d, depth, params, MACs, ... of the run
        self._best: dict[str, float] = {}  # SUMMARY_MIN's lowest values so far in the run

    def describe(self, group: str, tags: list[str], config: dict, facts: dict) -> None:
        """Set the run's group, tags and config; explicit `group`/`tags` arguments win."""
        self._facts = facts
        if self._experiment is not None:  # already started: the group is fixed, the rest is not
            self._experiment.config.update(config, allow_val_change=True)
            self._experiment.tags = tuple(self._experiment.tags or ()) + tuple(tags)
            return
        self._wandb_init["group"] = self._user_labels["group"] or group
        self._wandb_init["tags"] = list(self._user_labels["tags"] or []) + tags
        self._wandb_init["config"] = {**config, **(self._wandb_init.get("config") or {})}

    @property
    @rank_zero_experiment
    def experiment(self):
        import wandb

        if self._experiment is None and wandb.run is None and not hasattr(self, "_attach_id"):
            self._experiment = self._start()
            if getattr(self._experiment, "define_metric", None):
                # Lightning's step axis, as its own logger sets up.
                self._experiment.define_metric("trainer/global_step")
                self._experiment.define_metric("*", step_metric="trainer/global_step",
                                               step_sync=True)
            self._best = _best_so_far(Path(self.save_dir or ".") / "results.json")
        return super().experiment

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(metrics, step)
        # The paper's number, the lowest validation error, over the whole run: W&B's own
        # `summary="min"` sees only this process's piece of a resumed run (an offline resume is
        # a piece of its own until `wandb sync`), so the summary is set here, from the record's
        # earlier epochs on.
        for key in SUMMARY_MIN:
            if key in metrics:
                value = float(metrics[key])
                self._best[key] = min(self._best.get(key, value), value)
                self.experiment.summary[key] = {"min": self._best[key], "last": value}

    def _start(self):
        """`wandb.init`, online when that can work quickly, else offline, said in one line."""
        import wandb

        init = {k: v for k, v in self._wandb_init.items() if v is not None}
        user_settings = dict(init.pop("settings", None) or {})
        init.pop("mode", None)
        if init.get("dir"):  # wandb warns (outside `silent`) when its folder is missing
            os.makedirs(init["dir"], exist_ok=True)
        mode, reason = self._choose_mode()
        if mode == "online":
            try:
                run = wandb.init(**init, mode="online", settings=wandb.Settings(
                    **{"init_timeout": self._init_timeout, **user_settings}))
                self.mode = "online"
                return run
            except Exception as err:  # wandb.Error and friends: never stop the training
                reason = f"wandb.init failed ({type(err).__name__}: {str(err).splitlines()[0]})"
        run = wandb.init(**init, mode=mode if mode == "disabled" else "offline",
                         settings=wandb.Settings(**{"silent": True, **user_settings}))
        self.mode = "disabled" if mode == "disabled" else "offline"
        if self.mode == "offline":
            if self._log_model:
                self._log_model, reason = False, reason + "; checkpoints not uploaded"
            run_dir = os.path.dirname(run.dir)  # run.dir is the run's `files/` folder
            print(f"W&B offline ({reason}): upload later with `wandb sync {run_dir}`",
                  file=sys.stderr, flush=True)
        return run

    def _choose_mode(self) -> tuple[str, str]:
        """("online"|"offline"|"disabled", why) from flags, credentials and a quick probe."""
        import wandb

        env_mode = os.environ.get("WANDB_MODE", "").lower()
        if env_mode == "disabled":
            return "disabled", "WANDB_MODE=disabled"
        if self._force_offline or env_mode in OFFLINE_MODES:
            return "offline", "asked" if self._force_offline else f"WANDB_MODE={env_mode}"
        settings = wandb.setup().settings
        url = settings.base_url
        if not (settings.api_key or has_credentials(url)):
            return "offline", "no W&B credentials; `wandb login` to log online"
        if not reachable(url):
            return "offline", f"{url} not reachable within {PROBE_S:.0f} s"
        return "online", ""

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        super().log_hyperparams(params)
        params = params if isinstance(params, dict) else vars(params)
        if self._facts is None and "arch" in params:
            # Used without `describe_run` (a plain Trainer): derive what the hparams allow.
            overrides = {k: params.get(k) for k in OVERRIDES}
            net_config = model_config(params["arch"], **overrides)
            _, tags, self._facts = run_facts(params["arch"], net_config,
                                             params.get("image_size", 224))
            self.experiment.tags = tuple(self.experiment.tags or ()) + tuple(tags)
        if self._facts:
            # The module's hparams name its overrides like the real values (cardinality=None
            # means "the arch's own"): put the network's real C, d, depth and form back on top.
            self.experiment.config.update(self._facts, allow_val_change=True)

