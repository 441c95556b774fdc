"""The route class (``api.routing.JsonRoute``) on rules no route of the API uses yet: a
query parameter that takes several values, and one read by a dependency. A small app of
its own, through the real HTTP stack, so that a route added later keeps them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.testclient import TestClient

from api import errors
from api.routing import HeadAsGet, JsonRoute


def _paging(cursor: Annotated[str | None, Query(max_length=20)] = None) -> str | None:
    return cursor


router = APIRouter(route_class=JsonRoute)


@router.get("/things")
async def things(
    cursor: Annotated[str | None, Depends(_paging)],
    tags: Annotated[list[str] | None, Query()] = None,
    ids: Annotated[list[int], Query()] = [],  # noqa: B006 (FastAPI copies the default)
    limit: int = 10,
) -> dict[str, Any]:
    return {"tags": tags, "ids": ids, "limit": limit, "cursor": cursor}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    errors.install(app)
    app.include_router(router)
    app.add_middleware(HeadAsGet)
    with TestClient(app) as made:
        yield made


def test_a_parameter_of_several_values_may_be_given_again(client: TestClient) -> None:
    r = client.get("/things?tags=a&tags=b&ids=1&ids=2&limit=3")
    assert r.status_code == 200, r.text
    assert r.json() == {"tags": ["a", "b"], "ids": [1, 2], "limit": 3, "cursor": None}


@pytest.mark.parametrize("query", ["limit=1&limit=2", "cursor=a&cursor=b"])
def test_a_parameter_of_one_value_given_again_is_refused_by_name(
    client: TestClient, query: str
) -> None:
    r = client.get(f"/things?tags=a&tags=b&{query}")
    assert r.status_code == 422, r.text
    name = query.split("=")[0]
    answer = r.json()
    assert (answer["field"], answer["message"]) == (name, f"{name}: given 2 times: give it once")


def test_a_parameter_read_by_a_dependency_is_the_routes_own(client: TestClient) -> None:
    r = client.get("/things?cursor=next")
    assert r.status_code == 200, r.text
    assert r.json()["cursor"] == "next"
    r = client.get("/things?cursr=next")
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["allowed"]) == ("cursr", ["cursor", "ids", "limit", "tags"])
    assert client.head("/things?tags=a&tags=b").status_code == 200
