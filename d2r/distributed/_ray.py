"""Ray plumbing shared by the distributed stages: lazy import, connection, ordered dispatch.

Ray is an optional dependency (``pip install "d2r[ray]"``); nothing here imports it
at module import time, so ``import d2r.distributed`` works without it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence

from d2r.extras import require
from d2r.progress import progress

__all__ = ["require_ray", "init_ray", "run_on_actors", "kill_actors"]

logger = logging.getLogger(__name__)


def require_ray():
    """The ``ray`` module, or a MissingExtraError that says how to install it."""
    require("ray", "the distributed stages (--ray, --ray-shards, sharded search)")
    import ray

    return ray


def init_ray(address: Optional[str] = None, **init_kwargs: Any):
    """Connect to Ray once: reuse a running session, else ``ray.init(address=address, ...)``.

    ``address=None`` starts a local Ray instance on this machine unless the
    ``RAY_ADDRESS`` environment variable names a cluster; ``"auto"`` joins the
    cluster this node belongs to (``ray start --head`` / ``ray up``); ``"ray://host:10001"``
    uses Ray Client.  Returns the ``ray`` module.
    """
    ray = require_ray()
    if ray.is_initialized():
        if address is not None:
            logger.debug("Ray already initialized; ignoring address=%r", address)
        return ray
    kwargs = {"include_dashboard": False, **init_kwargs}
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    logger.info("connecting to Ray (%s)", address or "new local instance")
    ray.init(address=address, **kwargs)
    return ray


def kill_actors(actors: Sequence[Any]) -> None:
    """Terminate actors (errors of already-dead actors are ignored)."""
    ray = require_ray()
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


def run_on_actors(
    actors: Sequence[Any],
    num_tasks: int,
    submit: Callable[[Any, int], Any],
    on_result: Callable[[int, Any], None],
    *,
    ordered: bool = False,
    per_actor: int = 2,
    max_ahead: Optional[int] = None,
    show_progress: Optional[bool] = None,
    desc: str = "tasks",
) -> None:
    """Run tasks ``0 .. num_tasks-1`` on a pool of actors, keeping each actor busy.

    ``submit(actor, i)`` starts task ``i`` on ``actor`` and returns its ObjectRef;
    ``on_result(i, value)`` is called once per task, in completion order, or in
    task order when ``ordered`` (out-of-order results are held back, and no task
    more than ``max_ahead`` past the oldest unfinished one is started, which bounds
    the memory of held results).  Retrying a task whose actor died is Ray's job
    (``max_restarts`` / ``max_task_retries`` on the actor); an error that survives
    the retries is raised here.
    """
    ray = require_ray()
    if not actors:
        raise ValueError("run_on_actors needs at least one actor")
    if per_actor < 1:
        raise ValueError(f"per_actor must be >= 1, got {per_actor}")
    if max_ahead is None:
        max_ahead = 2 * per_actor * len(actors)
    busy = {i: 0 for i in range(len(actors))}
    pending: dict[Any, tuple[int, int]] = {}
    held: dict[int, Any] = {}
    next_task = 0
    next_result = 0  # ordered: next task index to hand to on_result
    bar = progress(desc, num_tasks, unit="task", show=show_progress)
    try:
        while next_task < num_tasks or pending:
            while next_task < num_tasks and (not ordered or next_task < next_result + max_ahead):
                free = [a for a, n in busy.items() if n < per_actor]
                if not free:
                    break
                actor = min(free, key=lambda a: busy[a])
                pending[submit(actors[actor], next_task)] = (next_task, actor)
                busy[actor] += 1
                next_task += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            task, actor = pending.pop(done[0])
            busy[actor] -= 1
            try:
                value = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                raise RuntimeError(
                    f"a Ray actor died during {desc} task {task} and could not be restarted "
                    f"({type(exc).__name__}); run the same command again: committed work is "
                    "kept and skipped") from exc
            bar.update(1)
            if not ordered:
                on_result(task, value)
                continue
            held[task] = value
            while next_result in held:
                on_result(next_result, held.pop(next_result))
                next_result += 1
    finally:
        bar.close()
