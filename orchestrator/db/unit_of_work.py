"""The unit of work: one database session per request or task, and its after-commit hooks.

The edge (a request, a task) opens one and owns its transactions; services take its
``db`` and never commit. Whatever must only happen once a change is durable (publishing
its events, queueing its tasks) is registered with :meth:`UnitOfWork.after_commit` and
runs after the commit that made it true, never after a rollback.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

# A hook gets the unit's session for a follow-up transaction of its own (persisting the
# stream IDs of the events it published, marking a run it could not queue as failed),
# which the unit commits when the hook returns.
AfterCommit = Callable[[Session], object]


class UnitOfWork:
    """One ``Session`` and what must follow each of its commits."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.db = session_factory()
        self._hooks: list[AfterCommit] = []

    def after_commit(self, hook: AfterCommit) -> None:
        """Run ``hook`` once the next commit succeeds (dropped if it rolls back)."""
        self._hooks.append(hook)

    def commit(self) -> None:
        """Commit, then run the hooks in order, each in a transaction of its own.

        A hook that raises rolls its own transaction back and drops the hooks after it;
        the exception propagates (the first commit stands).
        """
        self.db.commit()
        while self._hooks:
            hook = self._hooks.pop(0)
            try:
                hook(self.db)
                self.db.commit()
            except BaseException:
                self._hooks.clear()
                self.db.rollback()
                raise

    def rollback(self) -> None:
        self._hooks.clear()
        self.db.rollback()

    def close(self) -> None:
        """Discard what was not committed and return the connection to the pool."""
        self.rollback()
        self.db.close()

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()
