"""The Optuna sweeper, continued when its study is kept in a database (Hydra takes sweepers only
from the ``hydra_plugins`` package, hence this folder).

hydra-optuna-sweeper loads an existing study (``load_if_exists``) but then runs ``n_trials`` more
trials and numbers its jobs from 0 again, so a search stopped after 12 of 20 trials and rerun would
run 20 more and write them into the directories of the first ones. This subclass (the sweeper of
``hparams_search=optuna``) reads the study first: it runs only the trials missing to ``n_trials``
(finished ones, complete or failed, count; a trial left running by a stopped search is marked
failed, its job directory kept), numbers the new jobs after every trial the study holds, and seeds
the sampler with the search's seed + the number of those trials (a sampler seeded as at first would
draw the first search's points again). With
``storage: null`` (in memory) nothing is kept and it behaves as the plain sweeper.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:  # the scale extra; Hydra imports every module of hydra_plugins when it scans for plugins
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover - without the extra, no Optuna sweeper to extend
    OptunaSweeper = None


def trials_to_run(states: list[str], n_trials: int) -> tuple[int, int]:
    """(trials still to run, trials left running by a stopped search), from the study's trial
    states (``COMPLETE``, ``FAIL``, ``PRUNED``, ``RUNNING``, ``WAITING``)."""
    finished = sum(s in ("COMPLETE", "FAIL", "PRUNED") for s in states)
    stale = sum(s == "RUNNING" for s in states)
    return max(0, n_trials - finished - stale), stale


if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """``OptunaSweeper`` that continues a stored study to its ``n_trials`` in all."""

        def setup(self, *, hydra_context, task_function, config) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self._sampler_config = config.hydra.sweeper.get("sampler")

        def sweep(self, arguments: list[str]) -> None:
            impl = self.sweeper
            if impl.storage:
                import optuna

                try:
                    study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
                except KeyError:  # no such study yet: a new search
                    study = None
                if study is not None and study.trials:
                    states = [t.state.name for t in study.trials]
                    for trial in study.trials:
                        if trial.state.name == "RUNNING":  # its process was stopped: it will not report
                            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                    todo, stale = trials_to_run(states, impl.n_trials)
                    log.info(
                        "Optuna study %s holds %d trials (%d left running by a stopped search, now failed): "
                        "%d more to reach n_trials=%d",
                        impl.study_name,
                        len(states),
                        stale,
                        todo,
                        impl.n_trials,
                    )
                    impl.n_trials = todo
                    impl.job_idx = len(states)  # new jobs after the study's own: no directory reused
                    # the sampler seeded as in the first search would draw its first points again:
                    # the continuation's seed is the search's seed + the trials already in the study
                    seed = self._sampler_config.get("seed") if self._sampler_config is not None else None
                    if seed is not None:
                        from hydra.utils import instantiate

                        impl.sampler = instantiate(self._sampler_config, seed=int(seed) + len(states))
                    if todo == 0:
                        return None
            return super().sweep(arguments)
