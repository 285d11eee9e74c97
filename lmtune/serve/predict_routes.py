"""POST /v1/predict: the rows `lmtune predict` writes, for the inputs of one request.

Requests gather into shared `predict_rows` calls of up to --max-batch inputs. Inputs of different
shapes (plain texts, pairs or objects, token lists) are not mixed in one call."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter

from . import model_calls
from .errors import ApiError
from .schemas import PredictRequest, PredictResponse
from .served import ServeContext


def _shape(inputs: list[Any]) -> str:
    return "texts" if all(isinstance(x, str) for x in inputs) else "structured"


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["prediction"])

    @r.post("/predict", response_model=PredictResponse, summary="predictions of a fine-tuned encoder (one row per input)")
    async def predict(req: PredictRequest) -> dict[str, Any]:
        predictor = ctx.served.need_predictor()
        ctx.served.check_name(req.model)
        if not req.inputs:
            raise ApiError(400, "inputs: empty; give at least one input", param="inputs")
        if len(req.inputs) > ctx.options.max_inputs:
            raise ApiError(413, f"inputs: {len(req.inputs)} inputs; at most {ctx.options.max_inputs} per request "
                                "(--max-inputs)", param="inputs")
        rows = await ctx.run(partial(model_calls.predict, predictor), req.inputs, ("predict", _shape(req.inputs)))
        return {"model": ctx.served.name, "task": ctx.served.task, "predictions": rows}

    return r
