"""gateway.spend.identities: who is due to be written to principals (pure)."""

from __future__ import annotations

from typing import NamedTuple

from gateway.spend.identities import LastSeen


class Who(NamedTuple):
    sub: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]


def test_a_person_is_due_once_until_their_fields_change():
    seen = LastSeen()
    alice = Who("alice", "a@example.com", "Alice", ("eng",))
    for _ in range(5):
        seen.note(alice)
    assert seen.take() == {"alice": ("a@example.com", "Alice", ("eng",))}
    seen.note(alice)
    assert seen.take() == {}
    seen.note(alice._replace(groups=("eng", "ops")))
    assert seen.take() == {"alice": ("a@example.com", "Alice", ("eng", "ops"))}


def test_what_could_not_be_written_is_given_back_unless_newer_values_arrived():
    seen = LastSeen()
    seen.note(Who("alice", "old@example.com", None, ()))
    seen.note(Who("bob", "b@example.com", None, ()))
    due = seen.take()
    seen.note(Who("alice", "new@example.com", None, ()))
    seen.give_back(due)
    assert seen.take() == {"alice": ("new@example.com", None, ()), "bob": ("b@example.com", None, ())}
