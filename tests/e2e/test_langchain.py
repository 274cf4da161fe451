"""LangChain's OpenAI integrations against switchboard, as our users wire them."""

from __future__ import annotations

from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field, SecretStr

from tests.e2e.server import Served, gemma_models, start_server

pytestmark = pytest.mark.usefixtures("real_variants")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("langchain"), gemma_models(gemma_path))
    yield server
    server.stop()


def _chat(served: Served, **extra: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{served.url}/v1", api_key="x",
                      model="gemma3:270m", temperature=0, max_retries=0, **extra)


def test_chat_openai_invoke(served: Served) -> None:
    reply = _chat(served, max_tokens=8).invoke("Say hello.")
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["model_name"] == "gemma3:270m"


def test_chat_openai_stream_reports_usage(served: Served) -> None:
    chunks = list(_chat(served, max_tokens=8, stream_usage=True).stream("Say hello."))
    assert len(chunks) > 3
    total = reduce(lambda a, b: a + b, chunks)
    assert isinstance(total, AIMessageChunk) and total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] > 0


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)


def test_chat_openai_structured_output_with_json_schema(served: Served) -> None:
    # The schema's grammar allows runs of indentation, which the 270M model at temperature 0
    # may spend a hundred tokens on (how many depends on which prompt tokens the runner found
    # cached: with --swa-full it reuses 4 of the previous request's, not 1): room for them.
    model = _chat(served, max_tokens=256).with_structured_output(Person, method="json_schema")
    person = model.invoke("Invent a person.")
    assert isinstance(person, Person)
    assert 0 <= person.age <= 120


def test_openai_embeddings_documents_and_query(served: Served) -> None:
    # check_embedding_ctx_length=False: otherwise LangChain tokenises with tiktoken, which
    # downloads OpenAI's encodings and sends token ids meant for OpenAI's models, not ours.
    embeddings = OpenAIEmbeddings(openai_api_base=f"{served.url}/v1",
                                  openai_api_key=SecretStr("x"), model="gemma3:270m",
                                  check_embedding_ctx_length=False)
    documents = embeddings.embed_documents(["the first document", "another one"])
    query = embeddings.embed_query("a question")
    assert [len(vector) for vector in documents] == [640, 640]
    assert len(query) == 640 and documents[0] != documents[1]


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


def test_chat_openai_bound_tool_yields_a_tool_call(served: Served) -> None:
    model = _chat(served, max_tokens=96).bind_tools([get_weather], tool_choice="any")
    reply = model.invoke("What is the weather in Paris?")
    assert isinstance(reply, AIMessage) and reply.tool_calls
    call = reply.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
