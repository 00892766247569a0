"""How a passing candidate reaches production (``deployment.deployment_strategy``, or the run's Params form). One
class per strategy, so the DAG's steps are the same for all of them:

    deploy             place the candidate: production (replace), ``green`` (blue_green), ``canary`` with its share
    post_deploy_check  the smoke set through the alias the candidate is on
    online_test        canary only: wait for the online test's decision (:mod:`tuneloop.online_test`)
    promote            finish: nothing left (replace), production moves to green (blue_green), the canary ends
                       as the online test decided (promoted, rolled back, production kept)
    rollback           the check or the wait failed: undo the placement (production back, green dropped, the
                       canary ended)

The registry moves themselves are :mod:`tuneloop.deployment` and :mod:`tuneloop.rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneloop.history import DeploymentEvent, RunActor

if TYPE_CHECKING:
    from tuneloop.pipeline import PipelineRun

# the online test's decision -> how the canary ends
CANARY_ENDS = {"promote": "promoted", "rollback": "rolled_back", "keep_production": "not_promoted"}


class Strategy:
    """One way to reach production. ``alias``: where the candidate is placed (and checked); ``waits``: whether
    an online test decides before ``finish``."""

    name: str
    alias: str
    waits = False

    def place(self, run: PipelineRun, version: str, actor: RunActor) -> DeploymentEvent:
        raise NotImplementedError

    def finish(self, run: PipelineRun, version: str, decision: dict[str, Any] | None,
               actor: RunActor) -> DeploymentEvent | None:
        """The last move once the check (and the online test) passed; None when nothing is left to do."""
        return None

    def undo(self, run: PipelineRun, version: str, why: str, actor: RunActor) -> DeploymentEvent | None:
        """Take the placed ``version`` out of service after a failed check or wait; None when it is not there
        any more (someone else moved it)."""
        raise NotImplementedError


class Replace(Strategy):
    """Production moves to the candidate in one step; a failed check rolls production back."""

    name, alias = "replace", "production"

    def place(self, run: PipelineRun, version: str, actor: RunActor) -> DeploymentEvent:
        from tuneloop.deployment import deploy

        return deploy(run.registry, run.store, version, reason=run.gate_summary(), actor=actor.name,
                      run_id=run.run_id, keep_previous_versions=run.config.deployment.keep_previous_versions,
                      details=actor.details())

    def undo(self, run: PipelineRun, version: str, why: str, actor: RunActor) -> DeploymentEvent | None:
        from tuneloop.deployment import rollback

        if run.registry.production_version() != version:  # never roll back someone else's deployment
            return None
        return rollback(run.registry, run.store, reason=f"auto-rollback: {why}", actor=actor.name,
                        run_id=run.run_id, details=actor.details(), end_canary=False)


class BlueGreen(Strategy):
    """The candidate goes to ``green``; once its check passes, production moves in one step (``previous`` keeps
    the old one for an instant switch back); a failed check drops green and production never moved."""

    name, alias = "blue_green", "green"

    def place(self, run: PipelineRun, version: str, actor: RunActor) -> DeploymentEvent:
        from tuneloop.rollout import stage_green

        return stage_green(run.registry, run.store, version, reason=run.gate_summary(), actor=actor.name,
                           run_id=run.run_id)

    def finish(self, run: PipelineRun, version: str, decision: dict[str, Any] | None,
               actor: RunActor) -> DeploymentEvent | None:
        from tuneloop.rollout import switch_green

        return switch_green(run.registry, run.store, reason=f"green version {version} passed its post-deploy "
                            f"check; {run.gate_summary()}", actor=actor.name, run_id=run.run_id,
                            keep_previous_versions=run.config.deployment.keep_previous_versions)

    def undo(self, run: PipelineRun, version: str, why: str, actor: RunActor) -> DeploymentEvent | None:
        from tuneloop.rollout import drop_green

        if run.registry.alias_version("green") != version:
            return None
        return drop_green(run.registry, run.store, reason=f"post-deploy check on green failed: {why}",
                          actor=actor.name, run_id=run.run_id)


class Canary(Strategy):
    """The candidate answers ``deployment.canary.traffic_percent`` of the requests until the online test decides;
    a failed check (or wait) ends the canary and production never moved."""

    name, alias, waits = "canary", "canary", True

    def place(self, run: PipelineRun, version: str, actor: RunActor) -> DeploymentEvent:
        from tuneloop.rollout import start_canary

        return start_canary(run.registry, run.store, version,
                            traffic_percent=run.config.deployment.canary.traffic_percent,
                            reason=run.gate_summary(), actor=actor.name, run_id=run.run_id, details=actor.details())

    def finish(self, run: PipelineRun, version: str, decision: dict[str, Any] | None,
               actor: RunActor) -> DeploymentEvent | None:
        from tuneloop.rollout import end_canary, running_canary

        if decision is None:
            raise ValueError("a canary ends on the online test's decision; there is none")
        canary = running_canary(run.registry)
        if canary is None or canary.version != version:
            return None
        return end_canary(run.registry, run.store, how=CANARY_ENDS[decision["action"]],  # type: ignore[arg-type]
                          reason=f"online test: {decision['reason']}", actor=actor.name, run_id=run.run_id,
                          details={**actor.details(), "online_test": decision},
                          keep_previous_versions=run.config.deployment.keep_previous_versions)

    def undo(self, run: PipelineRun, version: str, why: str, actor: RunActor) -> DeploymentEvent | None:
        from tuneloop.rollout import end_canary, running_canary

        canary = running_canary(run.registry)
        if canary is None or canary.version != version:
            return None
        return end_canary(run.registry, run.store, how="rolled_back", reason=f"canary taken out: {why}",
                          actor=actor.name, run_id=run.run_id, details=actor.details())


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Replace(), BlueGreen(), Canary())}


@dataclass(frozen=True)
class Placement:
    """Where ``deploy`` put the candidate, read from its result (a run deployed before strategies existed has
    only the deploy event: replace, production, its ``to_version``)."""

    strategy: Strategy
    version: str
    alias: str

    @classmethod
    def of(cls, deployed: dict[str, Any]) -> Placement:
        strategy = strategy_for(deployed.get("strategy", "replace"))
        return cls(strategy, deployed.get("placed_version") or deployed["to_version"], strategy.alias)

    @property
    def staged(self) -> bool:
        """Production did not move at deploy (green, canary): undoing it never touches production."""
        return self.strategy.name != "replace"


def strategy_for(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"deployment_strategy: {name!r} is not one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
