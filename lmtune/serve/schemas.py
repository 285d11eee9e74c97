"""The body of POST /v1/predict. Strict: an unknown field or a wrong type is a 422 naming it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _input(x: Any) -> Any:
    """A text, a list of texts (a pair, or tokens) or an object of texts ({text, text_pair},
    {question, context}); which of them the model takes is the model's to say."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and all(isinstance(t, str) for t in x):
        return x
    if isinstance(x, dict) and all(isinstance(v, str) for v in x.values()):
        return x
    raise ValueError(f"expected a text, a list of texts or an object of texts, got {str(x)[:60]}")


Input = Annotated[Any, AfterValidator(_input)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: list[Input] = Field(
        description="texts; for text pairs [text, text_pair] or {text, text_pair}; for question answering "
        "{question, context}; for token classification also lists of tokens",
        examples=[["a lovely film", "a dull plot"]],
    )
    model: str | None = Field(None, description="the served model's name (optional)")


class PredictResponse(BaseModel):
    model: str
    task: str
    predictions: list[dict[str, Any]] = Field(
        description="one row per input, in order, as `lmtune predict` writes them; a classification or masked-LM "
        "input longer than the model's limit is cut and its row says \"truncated\": true"
    )
