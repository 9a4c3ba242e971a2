"""Training stages (rules of ``train.smk`` and ``monitor.smk``): one fine-tuning run with its method's regularisers
or inoculation prompt (:func:`build_method`, which the RL stages use too) and the judge-free monitor's calibrated
stop thresholds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from emguard import schemas
from emguard.io import read_parquet
from emguard.stages.prepare import training_rows

log = logging.getLogger("emguard")


def train_settings(training: dict, seed: int):
    """A :class:`emguard.training.TrainSettings` from the config's ``training`` section."""
    from emguard.models import LoraSettings
    from emguard.training import TrainSettings

    values = dict(training)
    lora = LoraSettings(**values.pop("lora"))
    return TrainSettings(**values, lora=lora, seed=seed)


def train_run(model_path: str, train_path: str, out_dir: str, *, subset: str | None, training: dict, seed: int,
              dtype: str, device: str, method: str = "sft", hparams: dict | None = None,
              persona_vectors: str | None = None, monitor: dict | None = None, dataset: str | None = None,
              probes_path: str | None = None, monitor_vectors: str | None = None, persona_layer: int | None = None,
              monitor_thresholds: str | None = None) -> None:
    """Fine-tune one run; ``out_dir`` receives ``adapter/``, ``train_log.parquet`` and ``checkpoints/``. With
    ``monitor`` (the config's ``monitor`` section, enabled) the judge-free EM monitor checks the run's
    out-of-domain probes (``probes_path``, without ``dataset``'s own set) and, with ``monitor_vectors``, the
    persona projection at ``persona_layer``; ``monitor_thresholds`` (JSON, rule monitor_thresholds) holds the
    calibrated stop thresholds when ``monitor.stop`` is ``calibrated``."""
    from emguard.models import dtype_record
    from emguard.training import optimizer_settings, train

    record = dtype_record(dtype, device)  # logged when train() loads the model
    settings = train_settings({**training, "dtype": record["dtype"]}, seed)
    optimizer_settings(settings)  # e.g. adamw_8bit without bitsandbytes: fail before reading data or the model
    rows = training_rows(train_path, subset) if subset else read_parquet(train_path, schemas.CHAT)
    from transformers import AutoConfig

    n_layers = AutoConfig.from_pretrained(model_path).num_hidden_layers
    regularisers, inoculation = build_method(method, hparams or {}, persona_vectors, n_layers)
    mon = None
    if monitor and monitor.get("enabled"):
        from emguard.training import monitor as mn

        calibrated = json.loads(Path(monitor_thresholds).read_text(encoding="utf-8")) if monitor_thresholds else None
        thresholds = mn.stop_thresholds(monitor["stop"], calibrated)
        mon = mn.build_monitor(probes_path, run_dataset=dataset, n_layers=n_layers,
                               persona_vectors=monitor_vectors, persona_layer=persona_layer if monitor_vectors else None,
                               settings=mn.MonitorSettings(every_steps=monitor["every_steps"],
                                                           batch_size=monitor["batch_size"],
                                                           ll_shift_threshold=thresholds.get("ll_shift"),
                                                           persona_threshold=thresholds.get("persona_proj")))
    summary = train(model_path, rows, out_dir, settings, regularisers=regularisers, inoculation_prompt=inoculation,
                    device=device, monitor=mon)
    from emguard.io import write_json

    write_json({**record, "method": method, "hparams": hparams or {}, **summary}, Path(out_dir) / "run.json")


def build_method(method: str, hparams: dict, persona_vectors: str | None, n_layers: int):
    """(regularisers, inoculation prompt) of a run's method; baselines and interleaving (a data transform,
    already applied to the training file) have neither."""
    from emguard import regularisers as reg

    if method == "kl":
        return [reg.KLRegulariser(hparams["kl_lambda"], direction=hparams["direction"])], None
    if method == "ldifs":
        # hparams come from emguard.config.grids._ldifs_grid; a missing key means the paper's choice (LDIFS_DEFAULTS)
        from emguard.config import LDIFS_DEFAULTS

        hp = {**LDIFS_DEFAULTS, **hparams}
        layers = hp["ldifs_layers"] or reg.every_nth_layer(n_layers, hp["layer_step"], include_final=hp["final_layer"])
        return [reg.LDIFSRegulariser(hp["ldifs_lambda"], layers, feature_norm=hp["feature_norm"],
                                     reduction=hp["reduction"])], None
    if method == "persona":
        from emguard.persona import load_vectors

        vectors, _ = load_vectors(persona_vectors, n_layers=n_layers)
        return [reg.SteeringRegulariser(vectors[hparams["steering_layer"]], hparams["steering_layer"],
                                        hparams["steering_alpha"], response_only=hparams["response_only"])], None
    if method == "inoculation":
        return [], hparams["inoculation_prompt"]
    return [], None


def monitor_thresholds_stage(logs: list[dict], out: str, *, margin: float, quantile: float) -> None:
    """The monitor's stop thresholds calibrated on the aligned runs' logged signals (``logs``: run descriptors
    with ``path``, each run's ``train_log.parquet``) as JSON ``{signal: threshold}``."""
    from emguard.io import write_json
    from emguard.training.monitor import calibrate_thresholds

    runs = [(r, read_parquet(r["path"])) for r in logs]
    thresholds = calibrate_thresholds(runs, margin=margin, quantile=quantile)
    log.info("monitor thresholds from %d aligned runs: %s", len(runs), thresholds)
    write_json(thresholds, Path(out))
