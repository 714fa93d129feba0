"""The decorator of the search's config classes: a frozen dataclass that pydantic checks whenever one
is built — from a YAML file, from the store, by ``dataclasses.replace`` or in code — against its field
types, the ranges in their ``Annotated`` metadata and its ``__post_init__`` rules, refusing unknown keys.
:mod:`evonorm_search.config` turns the errors into one line for the command line."""
from __future__ import annotations

from typing import Type, TypeVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

T = TypeVar("T")


def config_class(cls: Type[T]) -> Type[T]:
    return dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
