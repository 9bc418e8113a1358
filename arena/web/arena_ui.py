"""The Gradio pages: anonymous battle, named side-by-side, direct chat and the leaderboard tab.

Per-visitor state lives in ``gr.State`` (the battle or chat id) and in the database; the
visitor is known by the signed cookie the middleware sets.  Handlers stream both answers
as they arrive and show every refusal (empty prompt, moderation, rate limit, failed model)
as a message on the page.

Labels and messages are plain text, never emoji: a machine without an emoji font would show
boxes where the meaning is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from arena.battles import ArenaError, ArenaService, BattleView, TurnUpdate
from arena.db.models import BattleMode, BattleStatus
from arena.identity import VisitorIdentity
from arena.web.visitors import visitor_id_of_gradio

logger = logging.getLogger(__name__)

VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}

TAB_INTROS = {
    "battle": "Ask anything. Two anonymous models answer side by side; vote for the better answer, "
              "and only then see who they are.",
    "named": "Pick two models and compare their answers side by side; votes here count too.",
    "chat": "Chat with one model of your choice.",
}

# Gradio's default theme fetches its fonts from Google Fonts; offline, glyphs fall back
# letter by letter. The machine's own fonts look the same everywhere.
ARENA_THEME = gr.themes.Default(font=["system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
                                font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])

ARENA_CSS = """
#arena-header h1 { margin-bottom: 0; }
.vote-row button { min-width: 8em; }
/* Gradio's chatbot has a Clear button that would wipe one side of a battle: not in battle panes. */
.battle-chat button[aria-label="Clear"], .battle-chat button[title="Clear"] { display: none !important; }
/* A disabled button must look disabled (the primary variant keeps its colour otherwise). */
button:disabled, button[disabled] { opacity: .45; cursor: not-allowed; filter: grayscale(1); }
"""


def build_arena_ui(
    service: ArenaService,
    identity: VisitorIdentity,
    leaderboard_tab: Callable[[], None],
) -> gr.Blocks:
    """The whole page; ``leaderboard_tab`` renders the leaderboard tab's content."""
    with gr.Blocks(title="Arena: chat with two anonymous models and vote") as blocks:
        gr.Markdown(
            "# Arena\nCompare language models by chatting with them and voting; the votes rank them on "
            "the leaderboard. Your conversations and votes are stored and may be published (without your "
            "identity) to help research.",
            elem_id="arena-header",
        )
        with gr.Tabs():
            with gr.Tab("Arena (battle)", id="battle"):
                gr.Markdown(TAB_INTROS["battle"], elem_id="battle-intro")
                _battle_panel(service, identity, BattleMode.ANONYMOUS, prefix="battle")
            with gr.Tab("Side-by-side (named)", id="named"):
                gr.Markdown(TAB_INTROS["named"], elem_id="named-intro")
                _battle_panel(service, identity, BattleMode.NAMED, prefix="named")
            with gr.Tab("Direct chat", id="chat"):
                gr.Markdown(TAB_INTROS["chat"], elem_id="chat-intro")
                _chat_panel(service, identity)
            with gr.Tab("Leaderboard", id="leaderboard"):
                leaderboard_tab()
    return blocks


# ----------------------------------------------------------------------------- battles


def _battle_panel(service: ArenaService, identity: VisitorIdentity, mode: str, prefix: str) -> None:
    names = list(service.registry)
    picks: list[Any] = [gr.State(None), gr.State(None)]  # the visitor's picks in named battles
    if mode == BattleMode.NAMED:
        picks = []
        with gr.Row():
            picks.append(gr.Dropdown(names, value=names[0] if names else None, label="Model A",
                                     elem_id=f"{prefix}-pick-a"))
            picks.append(gr.Dropdown(names, value=names[1] if len(names) > 1 else None, label="Model B",
                                     elem_id=f"{prefix}-pick-b"))
    battle_id = gr.State(None)
    with gr.Row():
        chat_a = gr.Chatbot(label=_side_label("A", None, mode), height=420, elem_id=f"{prefix}-chat-a",
                            elem_classes="battle-chat")
        chat_b = gr.Chatbot(label=_side_label("B", None, mode), height=420, elem_id=f"{prefix}-chat-b",
                            elem_classes="battle-chat")
    status = gr.Markdown("", elem_id=f"{prefix}-status")
    with gr.Row(elem_classes="vote-row"):
        vote_buttons = {
            choice: gr.Button(label, interactive=False, elem_id=f"{prefix}-vote-{choice}")
            for choice, label in VOTE_LABELS.items()
        }
    with gr.Row():
        # No max_length: the browser would cut a longer text silently; the service refuses it with a message.
        prompt = gr.Textbox(placeholder=_placeholder("Type your question and press Enter", service),
                            show_label=False, scale=8, elem_id=f"{prefix}-prompt")
        send = gr.Button("Send", variant="primary", scale=1, elem_id=f"{prefix}-send")
    with gr.Row():
        regenerate = gr.Button("Regenerate", interactive=False, elem_id=f"{prefix}-regenerate")
        new_round = gr.Button("New round", elem_id=f"{prefix}-new-round")

    outputs = [chat_a, chat_b, status, battle_id, prompt, send, regenerate, *vote_buttons.values()]

    async def on_send(text: str, current: str | None, pick_a: str | None, pick_b: str | None,
                      request: gr.Request) -> AsyncIterator[tuple]:
        try:
            visitor = visitor_id_of_gradio(request, identity)
            service.check_prompt(text)  # an empty or refused prompt creates no battle
            if current is None:
                view = await service.run_blocking(service.create_battle, visitor, mode, pick_a, pick_b)
                current = view.id
            else:
                view = await service.run_blocking(service.get_battle, current)
            updates = service.play_turn(current, visitor, text)
            async for update in updates:
                yield _render_turn(view, text, update, current, mode)
        except (ArenaError, PermissionError) as exc:
            yield await service.run_blocking(_render_error, service, current, exc, text, mode)

    async def on_regenerate(current: str | None, request: gr.Request) -> AsyncIterator[tuple]:
        if current is None:
            yield _render_error(service, None, ArenaError("nothing to regenerate yet"), "", mode)
            return
        try:
            visitor = visitor_id_of_gradio(request, identity)
            view = await service.run_blocking(service.get_battle, current)
            last_prompt = _drop_last_turn(view)
            async for update in service.regenerate(current, visitor):
                yield _render_turn(view, last_prompt, update, current, mode)
        except (ArenaError, PermissionError) as exc:
            yield await service.run_blocking(_render_error, service, current, exc, "", mode)

    def on_vote(choice: str) -> Callable[..., tuple]:
        def handler(current: str | None, request: gr.Request) -> tuple:
            try:
                outcome = service.vote(current or "", visitor_id_of_gradio(request, identity), choice)
            except (ArenaError, PermissionError) as exc:
                return _render_error(service, current, exc, "", mode)
            view = service.get_battle(outcome.battle_id)
            verdict = VOTE_LABELS[outcome.choice]
            message = (f"### Thanks for voting! ({verdict})\n**Model A: {outcome.model_a}** · "
                       f"**Model B: {outcome.model_b}**\n\nStart a new round to keep going.")
            return _render_view(view, message, current, mode, can_send=False)

        return handler

    def on_new_round() -> tuple:
        return (gr.Chatbot(value=[], label=_side_label("A", None, mode)),
                gr.Chatbot(value=[], label=_side_label("B", None, mode)),
                "New round: ask a question.", None, gr.Textbox(value="", interactive=True),
                gr.Button(interactive=True), gr.Button(interactive=False),
                *[gr.Button(interactive=False) for _ in VOTE_LABELS])

    def on_cleared(current: str | None) -> tuple:
        """Put the stored battle back if a pane was wiped anyway: both sides stay what was voted on."""
        if current is None:
            return on_new_round()
        view = service.get_battle(current)
        can_send = view.status in (BattleStatus.OPEN, BattleStatus.READY)
        return _render_view(view, "", current, mode, can_send=can_send)

    send_inputs = [prompt, battle_id, *picks]
    send.click(on_send, send_inputs, outputs, concurrency_limit=None)
    prompt.submit(on_send, send_inputs, outputs, concurrency_limit=None)
    regenerate.click(on_regenerate, [battle_id], outputs, concurrency_limit=None)
    for choice, button in vote_buttons.items():
        button.click(on_vote(choice), [battle_id], outputs, concurrency_limit=None)
    new_round.click(on_new_round, None, outputs)
    for pane in (chat_a, chat_b):
        pane.clear(on_cleared, [battle_id], outputs)
    if mode == BattleMode.NAMED:
        for pick in picks:
            pick.change(on_new_round, None, outputs)


def _side_label(side: str, model: str | None, mode: str) -> str:
    if model:
        return f"Model {side}: {model}"
    return f"Model {side}" if mode == BattleMode.ANONYMOUS else f"Model {side} (pick above)"


def _render_turn(view: BattleView, prompt: str, update: TurnUpdate, battle_id: str, mode: str) -> tuple:
    chats = []
    for side in ("a", "b"):
        history: list[Any] = [dict(m) for m in view.messages.get(side, [])]
        state = update.sides[side]
        answer = state.text
        if state.error:
            answer = (answer + "\n\n" if answer else "") + f"**Error:** {state.error}"
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer or "…"}]
        model = view.model_a if side == "a" else view.model_b
        chats.append(gr.Chatbot(value=history, label=_side_label(side.upper(), model, mode)))
    if not update.done:
        status, can_vote = "Both models are answering…", False
    elif update.status == BattleStatus.READY:
        status, can_vote = "Both answered. Vote, or keep chatting to see more.", True
    else:
        status, can_vote = "**A model failed**, so this battle cannot be voted on. Start a new round.", False
    can_send = update.done and update.status != "failed"
    return (
        *chats,
        status,
        battle_id,
        gr.Textbox(value="" if update.done else prompt, interactive=can_send),
        gr.Button(interactive=can_send),
        gr.Button(interactive=update.done),
        *[gr.Button(interactive=can_vote) for _ in VOTE_LABELS],
    )


def _render_view(view: BattleView, status: str, battle_id: str | None, mode: str, *, can_send: bool) -> tuple:
    chats = [
        gr.Chatbot(value=list[Any](view.messages.get(side, [])),
                   label=_side_label(side.upper(), view.model_a if side == "a" else view.model_b, mode))
        for side in ("a", "b")
    ]
    can_vote = view.status == BattleStatus.READY
    return (*chats, status, battle_id, gr.Textbox(interactive=can_send), gr.Button(interactive=can_send),
            gr.Button(interactive=can_vote), *[gr.Button(interactive=can_vote) for _ in VOTE_LABELS])


def _render_error(service: ArenaService, battle_id: str | None, exc: Exception, prompt: str, mode: str) -> tuple:
    message = f"**Not sent:** {exc}" if prompt else f"**Error:** {exc}"
    view = None
    if battle_id is not None:
        try:
            view = service.get_battle(battle_id)
        except ArenaError:
            view = None
    if view is None:
        return (gr.Chatbot(), gr.Chatbot(), message, battle_id, gr.Textbox(value=prompt, interactive=True),
                gr.Button(interactive=True), gr.Button(), *[gr.Button() for _ in VOTE_LABELS])
    can_send = view.status in (BattleStatus.OPEN, BattleStatus.READY)
    rendered = _render_view(view, message, battle_id, mode, can_send=can_send)
    return (*rendered[:4], gr.Textbox(value=prompt, interactive=can_send), *rendered[5:])


def _placeholder(text: str, service: ArenaService) -> str:
    return f"{text} (up to {service.prompt_limits.message_limit():,} characters)"


def _drop_last_turn(view: BattleView) -> str:
    """Remove the last exchange from the view (it is being regenerated); return its prompt."""
    prompt = ""
    for side, messages in view.messages.items():
        if messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if messages and messages[-1]["role"] == "user":
            prompt = messages.pop()["content"]
        view.messages[side] = messages
    return prompt


# ----------------------------------------------------------------------------- direct chat


def _chat_panel(service: ArenaService, identity: VisitorIdentity) -> None:
    names = list(service.registry)
    model = gr.Dropdown(names, value=names[0] if names else None, label="Model", elem_id="chat-model")
    conversation_id = gr.State(None)
    chat = gr.Chatbot(label="Conversation", height=420, elem_id="chat-chat")
    status = gr.Markdown("", elem_id="chat-status")
    with gr.Row():
        prompt = gr.Textbox(placeholder=_placeholder("Type a message", service), show_label=False, scale=8,
                            elem_id="chat-prompt")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")

    async def on_send(text: str, current: str | None, chosen: str, history: list[dict[str, Any]] | None,
                      request: gr.Request) -> AsyncIterator[tuple]:
        history = list(history or [])
        try:
            visitor = visitor_id_of_gradio(request, identity)
            service.check_prompt(text)  # an empty or refused prompt creates no conversation
            current = current or await service.run_blocking(service.create_chat, visitor, chosen)
            async for state in service.chat_turn(current, visitor, text):
                answer = state.text + (f"\n\n**Error:** {state.error}" if state.error else "")
                shown = history + [{"role": "user", "content": text}, {"role": "assistant", "content": answer or "…"}]
                yield shown, "", current, ("" if state.done else "Answering…")
        except (ArenaError, PermissionError) as exc:
            yield history, text, current, f"**Not sent:** {exc}"

    outputs = [chat, prompt, conversation_id, status]
    send.click(on_send, [prompt, conversation_id, model, chat], outputs, concurrency_limit=None)
    prompt.submit(on_send, [prompt, conversation_id, model, chat], outputs, concurrency_limit=None)
    model.change(lambda: ([], "", None, ""), None, outputs)
