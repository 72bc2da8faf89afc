"""Optuna and MLflow pointing at each other: each Optuna trial carries its MLflow run's id and name (user
attributes), each MLflow trial run its Optuna trial number (`study.contract.OPTUNA_TRIAL_TAG`), and the study
names its objective (the spec's `search.metric`, e.g. val_r2), as optuna-dashboard shows it.

`LinkedOptunaSearch` is Ray Tune's `OptunaSearch` whose Optuna trials record the Tune trial they became;
`OptunaLink` finds an Optuna trial by that Tune trial id in the study's storage (from the MLflow callback, in the
sweep driver's process) and writes the run's id and name onto it. Both live in the driver; the link goes through
the storage, so it holds across `resume`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from study.contract import OPTUNA_RUN_ID_ATTR, OPTUNA_RUN_NAME_ATTR, OPTUNA_TUNE_TRIAL_ATTR

log = logging.getLogger(__name__)


def open_storage(rdb_url: str | None, journal: Path):
    """The Optuna study's storage: the spec's RDB URL, else a JournalStorage file (`optuna-dashboard FILE` opens
    it)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if rdb_url:
        return RDBStorage(rdb_url)
    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


class LinkedOptunaSearch(OptunaSearch):
    """`OptunaSearch` whose study names its objective and whose trials name their Tune trial (a user attribute)."""

    def _setup_study(self, mode) -> None:
        super()._setup_study(mode)
        if isinstance(self._metric, str):
            with warnings.catch_warnings():  # experimental in some Optuna versions
                warnings.simplefilter("ignore")
                self._ot_study.set_metric_names([self._metric])

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr(OPTUNA_TUNE_TRIAL_ATTR, trial_id)
        return params


class OptunaLink:
    """Writes an MLflow run's id and name onto the Optuna trial of a Tune trial; pickled with the Tune callback.

    Args:
        study_name: the Optuna study (``{sweep}-{sweep_id}``).
        rdb_url: the spec's `search.storage`; None: the journal file.
        journal: the JournalStorage file of the sweep.
    """

    def __init__(self, study_name: str, rdb_url: str | None, journal: Path) -> None:
        self.study_name, self.rdb_url, self.journal = study_name, rdb_url, Path(journal)
        self._storage: Any = None

    def __getstate__(self) -> dict:
        return {"study_name": self.study_name, "rdb_url": self.rdb_url, "journal": self.journal}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._storage = None

    def link(self, tune_trial_id: str, run_id: str, run_name: str) -> int | None:
        """The Optuna trial number of `tune_trial_id` (None when the study holds no such trial), after setting its
        MLflow user attributes (skipped when Optuna has already closed the trial)."""
        if self._storage is None:
            self._storage = open_storage(self.rdb_url, self.journal)
        storage = self._storage
        try:
            study_id = storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return None
        for trial in storage.get_all_trials(study_id, deepcopy=False):
            if trial.user_attrs.get(OPTUNA_TUNE_TRIAL_ATTR) != tune_trial_id:
                continue
            if trial.user_attrs.get(OPTUNA_RUN_ID_ATTR) != run_id:
                try:
                    storage.set_trial_user_attr(trial._trial_id, OPTUNA_RUN_ID_ATTR, run_id)
                    storage.set_trial_user_attr(trial._trial_id, OPTUNA_RUN_NAME_ATTR, run_name)
                except RuntimeError as err:  # the trial already finished: Optuna refuses updates
                    log.debug("Optuna trial %d: cannot set the MLflow run (%s)", trial.number, err)
            return trial.number
        return None
