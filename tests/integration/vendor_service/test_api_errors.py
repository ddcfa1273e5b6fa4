"""Every error the API gives is {"detail": "<plain words>"}; no docs page, no CDN."""

from __future__ import annotations

from tether.vendor_service.api_models import ENDPOINTS

from .conftest import ADMIN, Api


async def test_unknown_route_and_wrong_method_are_json(api: Api) -> None:
    missing = await api.client.get("/api/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    wrong = await api.client.get("/api/login")
    assert wrong.status_code == 405
    assert wrong.json() == {"detail": "Method Not Allowed"}


async def test_no_docs_pages_and_openapi_documents_errors(api: Api) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert (await api.client.get(path)).status_code == 404
    schema = (await api.client.get("/openapi.json")).json()
    assert "cdn" not in str(schema).lower()
    operations = [op for ops in schema["paths"].values() for op in ops.values()]
    assert len(operations) == len(ENDPOINTS)  # every operation is in the contract
    for op in operations:
        assert "4XX" in op["responses"]
        assert "422" not in op["responses"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_body_shapes_that_are_not_objects(api: Api) -> None:
    headers = await api.headers(ADMIN)
    for content in (b"[]", b"null", b"42", b'"text"', b"", b"\xff\xfe"):
        response = await api.client.post(
            "/api/keys", headers={**headers, "Content-Type": "application/json"}, content=content
        )
        assert response.status_code == 400, content
        assert isinstance(response.json()["detail"], str)
    text = await api.client.post(
        "/api/keys", headers={**headers, "Content-Type": "text/plain"}, content=b"serial=A"
    )
    assert text.status_code == 400
