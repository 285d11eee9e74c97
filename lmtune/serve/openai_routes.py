"""POST /v1/chat/completions and /v1/completions: OpenAI's API over a Generator.

Non-streamed requests with the same settings share `generate_batch` calls (greedy ones ignore
the sampling fields, so they all share); a seeded sampled request runs alone, so that the same
request gives the same text whatever else the server is doing. Streamed requests run one at a time
in the same worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from functools import partial
from typing import Any

from fastapi import APIRouter

from ..core.errors import LmtuneError
from ..tasks.decoding import GenerationSettings
from . import model_calls
from .batching import Closed
from .errors import ApiError
from .model_calls import Prompt
from .openai_schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from .openai_shapes import CHAT, COMPLETION, Flavour, Reply, prompt_tokens, usage
from .served import ServeContext
from .streaming import End, EventFeed, EventStreamResponse, Ready, events

DEFAULT_MAX_TOKENS = 128

# GenerationSettings' field names -> the request's, for error messages
FIELD_NAMES = {"max_new_tokens": "max_tokens"}


def settings_of(req: SamplingFields, limit: int, max_tokens: int | None) -> GenerationSettings:
    """The generation settings a request asks for, with OpenAI's defaults (temperature 1)."""
    max_tokens = min(DEFAULT_MAX_TOKENS, limit) if max_tokens is None else max_tokens
    if max_tokens > limit:
        raise ApiError(422, f"max_tokens: must be at most {limit} (the server's --max-tokens-limit), got {max_tokens}",
                       param="max_tokens")
    settings = GenerationSettings(
        max_new_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        stop=req.stop_strings(),
        seed=req.seed,
    )
    problems = settings.problems()
    if problems:
        field, _, message = problems[0].partition(":")
        name = FIELD_NAMES.get(field, field)
        raise ApiError(422, f"{name}:{message}", param=name)
    if settings.greedy:  # sampling fields do not matter: let every greedy request share a batch
        settings = dataclasses.replace(settings, top_p=1.0, top_k=0, seed=None)
    return settings


def _check_size(ctx: ServeContext, prompts: int, n: int) -> None:
    limit = ctx.options.max_inputs
    if prompts * n > limit:
        what = f"{prompts} prompts × n={n}" if prompts > 1 else f"n={n}"
        raise ApiError(413, f"{what} asks for {prompts * n} generations; at most {limit} per request (--max-inputs)",
                       param="n" if prompts == 1 else "prompt")


async def _complete(ctx: ServeContext, flavour: Flavour, req: SamplingFields, prompts: list[Prompt],
                    max_tokens: int | None) -> Any:
    generator = ctx.served.generator
    settings = settings_of(req, ctx.options.max_tokens_limit, max_tokens)
    _check_size(ctx, len(prompts), req.n)
    expanded = [p for p in prompts for _ in range(req.n)]  # choice i is prompt i // n
    reply = Reply.new(flavour, ctx.served.name)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await _stream(ctx, reply, settings, expanded, req.n, include_usage)
    sampled_with_seed = settings.seed is not None and not settings.greedy
    key = None if sampled_with_seed else ("generate", settings)
    work = partial(model_calls.generate, generator, settings, ctx.options.max_batch)
    generations = await ctx.run(work, expanded, key)
    return reply.body(generations, req.n)


async def _stream(ctx: ServeContext, reply: Reply, settings: GenerationSettings, prompts: list[Prompt], n: int,
                  include_usage: bool) -> EventStreamResponse:
    feed = EventFeed(asyncio.get_running_loop())
    cancelled = threading.Event()
    work = partial(model_calls.stream, ctx.served.generator, settings, feed, cancelled)
    job = ctx.submit(work, prompts, None)
    job.future.add_done_callback(feed.end_with)

    def close() -> None:  # the response ended, or the client went away: stop and free the slot
        cancelled.set()
        ctx.batcher.cancel(job)

    try:
        first = await feed.get()  # wait for the prompt checks, so that a bad prompt is a plain 400
    except BaseException:
        close()
        raise
    if not isinstance(first, Ready):  # the job ended before it started: its error (a bad prompt is a 400)
        close()
        error = first.error if isinstance(first, End) else None
        if isinstance(error, Closed):
            raise ApiError(503, str(error), headers={"Retry-After": "1"})
        raise error or RuntimeError("the stream ended before it started")
    flavour = reply.flavour

    def finish(generations: list[Any]) -> dict[str, Any] | None:
        if not include_usage:
            return None
        return reply.chunk([], usage(generations, prompt_tokens(generations, n)), with_usage=True)

    body = events(
        feed,
        on_start=lambda i: None if flavour.first_delta(i) is None else reply.chunk([flavour.first_delta(i)], with_usage=include_usage),
        on_piece=lambda p: reply.chunk([flavour.piece(p.index, p.text)], with_usage=include_usage),
        on_done=lambda d: reply.chunk([flavour.last_delta(d.index, d.generation.finish_reason)], with_usage=include_usage),
        on_finish=finish,
    )
    return EventStreamResponse(body, on_close=close)


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["generation"])

    @r.post("/chat/completions", summary="OpenAI chat completions (generative models)")
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        generator = ctx.served.need_generator()
        ctx.served.check_name(req.model)
        if not req.messages:
            raise ApiError(400, "messages: empty; give at least one message", param="messages")
        try:
            text = generator.chat_prompt([m.as_dict() for m in req.messages])
        except LmtuneError:
            raise
        except Exception as e:  # a chat template may refuse an order of roles, e.g. two user turns
            raise ApiError(400, f"messages: the model's chat template refused them ({e})", param="messages") from None
        max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
        return await _complete(ctx, CHAT, req, [Prompt(text, "messages")], max_tokens)

    @r.post("/completions", summary="OpenAI completions: each prompt a user message in the chat template, or "
                                     "continued as it is with raw (generative models)")
    async def completions(req: CompletionRequest) -> Any:
        generator = ctx.served.need_generator()
        ctx.served.check_name(req.model)
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not texts:
            raise ApiError(400, "prompt: empty list; give a text or a list of texts", param="prompt")
        if isinstance(req.prompt, str):
            prompts = [Prompt(req.prompt, "prompt")]
        else:
            prompts = [Prompt(t, f"prompt[{i}]") for i, t in enumerate(texts)]
        for p in prompts:
            if not p.text.strip():
                raise ApiError(400, f"{p.where}: empty prompt", param="prompt")
        prompts = [Prompt(generator.prompt(p.text, raw=req.raw), p.where) for p in prompts]
        return await _complete(ctx, COMPLETION, req, prompts, req.max_tokens)

    return r
