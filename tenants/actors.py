"""Who is acting: passed to every service so that audit events say who changed what, and from where."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    name: str
    source: str = "system"  # admin, api, command, task, system
    ip: str | None = None
    user_id: int | None = None
    is_sysadmin: bool = False

    @property
    def is_operator(self) -> bool:
        """Sysadmins and the system itself (commands, tasks, start-up): trusted to point endpoints anywhere,
        internal hosts included. Everyone else is held to the egress policy's tenant rule."""
        return self.is_sysadmin or self.source in ("system", "command", "task")

    @classmethod
    def from_request(cls, request, *, source: str) -> "Actor":
        user = getattr(request, "user", None)
        auth = getattr(request, "auth", None)
        if isinstance(auth, Actor):
            return auth
        ip = request.META.get("REMOTE_ADDR")
        if user is not None and user.is_authenticated:
            return cls(name=user.get_username(), source=source, ip=ip, user_id=user.pk, is_sysadmin=user.is_superuser)
        return cls(name="anonymous", source=source, ip=ip)


SYSTEM = Actor(name="system")
