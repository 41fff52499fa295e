"""Types that cross processes in the typed-value tests (importable by both sides)."""

from __future__ import annotations

import dataclasses
import datetime
import sys

import anyio
from pydantic import BaseModel

from asyncstampede import Stampede


@dataclasses.dataclass(frozen=True)
class User:
    """A dataclass with a datetime: stored as JSON, back as a User."""

    id: int
    name: str
    joined: datetime.datetime
    tags: tuple[str, ...] = ()


class Account(BaseModel):
    """A pydantic model, as a FastAPI handler returns."""

    id: int
    owner: User
    balance: float
    opened: datetime.date


JOINED = datetime.datetime(2024, 5, 17, 9, 30, 15, 250_000, tzinfo=datetime.UTC)


def user(n: int) -> User:
    """The user *n*, the same in every process."""
    return User(n, f"user {n}", JOINED, ("a", "b"))


def account(n: int) -> Account:
    """The account *n*, the same in every process."""
    return Account(id=n, owner=user(n), balance=12.5, opened=datetime.date(2020, 1, 2))


async def _store(url: str, namespace: str) -> None:
    async with Stampede.from_url(url, namespace=namespace) as cache:

        async def load_user(n: int) -> User:
            return user(n)

        async def load_account(n: int) -> Account:
            return account(n)

        await cache.get_or_compute("user:7", load_user, 60, 7, model=User)
        await cache.get_or_compute("account:7", load_account, 60, 7, model=Account)


if __name__ == "__main__":  # python _models.py URL NAMESPACE: store user 7 and account 7
    anyio.run(_store, sys.argv[1], sys.argv[2])
