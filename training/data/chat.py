"""Chat conversations as supervised token sequences: which tokens carry loss, and where a long one may be cut.

The conversation is rendered with the processor's chat template, turn by turn, so training sees exactly the text that
inference prompts are built from. Each assistant answer and its end-of-turn token (`<|im_end|>`) are supervised; the
template's markers, the user turns, the image placeholders and the newline after `<|im_end|>` are not (as in the
reference). A sequence longer than `max_length` loses answer text only: the prompt and the image placeholders are never
cut (cutting placeholders is the reference's bug that makes every 512-px caption sample fail).
"""

from dataclasses import dataclass

from .skips import TOO_LONG, SkipSample


IGNORE_INDEX = -100


@dataclass
class _Turn:
    """Token ids of one exchange: the prompt up to the assistant header, the answer, and the template's tail."""

    prompt: list[int]
    answer: list[int]
    tail: list[int]


class ChatEncoder:
    """Turns chat messages into `(input_ids, labels)` for training.

    Args:
        processor: a `HarmonProcessor`; its chat template renders the turns and its tokenizer encodes them.
        end_of_turn_token_id (`int`): the token that ends an answer (the model's `eos_token_id`, `<|im_end|>`); the
            answer is supervised up to and including it.
        max_length (`int`): longest sequence in tokens.
    """

    def __init__(self, processor, end_of_turn_token_id: int, max_length: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token, self.image_token_id = processor.image_token, processor.image_token_id
        self.end_of_turn = self.tokenizer.convert_ids_to_tokens(end_of_turn_token_id)
        self.max_length = max_length
        # Fail at start-up, not on the first sample, when the template does not render turns incrementally.
        self._pieces([{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}])

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if not messages and not add_generation_prompt:
            return ""
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def _pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """The rendered conversation as consecutive `(text, supervised)` pieces."""
        pieces, rendered = [], ""
        for index, message in enumerate(messages):
            steps = [self._render(messages[: index + 1])]
            if message["role"] == "assistant":
                steps.insert(0, self._render(messages[:index], add_generation_prompt=True))
            for step in steps:
                if not step.startswith(rendered):
                    raise ValueError(
                        "the processor's chat template must render a conversation as its first turns followed by the "
                        f"next one; rendering {len(messages[: index + 1])} messages gave {step!r:.300}, which does not "
                        f"start with the rendering of the earlier ones {rendered!r:.300}."
                    )
            if message["role"] != "assistant":
                pieces.append((steps[0][len(rendered) :], False))
            else:
                header, full = steps
                body = full[len(header) :]
                cut = body.rfind(self.end_of_turn)
                if cut < 0:
                    raise ValueError(
                        f"the chat template must end assistant turns with the end-of-turn token {self.end_of_turn!r}; "
                        f"it rendered {body!r:.300}."
                    )
                cut += len(self.end_of_turn)
                pieces += [(header[len(rendered) :], False), (body[:cut], True), (body[cut:], False)]
            rendered = steps[-1]
        return pieces

    def _tokenize(self, text: str, num_placeholders: int, first: bool) -> list[int]:
        """Token ids of `text`, each image token expanded to `num_placeholders` placeholder ids.

        Special tokens (e.g. a BOS) are added to the start of the sequence only, as when the whole prompt is tokenised
        at inference.
        """
        ids = []
        for number, part in enumerate(text.split(self.image_token)):
            if number:
                ids += [self.image_token_id] * num_placeholders
            if part:
                ids += self.tokenizer(part, add_special_tokens=first and not ids)["input_ids"]
        return ids

    def encode(self, messages: list[dict], num_placeholders: int = 0) -> tuple[list[int], list[int]]:
        """`(input_ids, labels)` of a conversation, truncated to `max_length` in answer text only.

        Args:
            messages: `{"role": "system" | "user" | "assistant", "content": ...}` turns with at least one assistant
                turn; content as the processor's template takes it (a string, or image/text items).
            num_placeholders: placeholder tokens per image token of the rendered text.

        Raises:
            SkipSample: (`too_long`) when not even the first prompt with its image placeholders and one answer token
                fits in `max_length`.
        """
        turns, prompt, after_answer = [], [], False
        for text, supervised in self._pieces(messages):
            ids = self._tokenize(text, num_placeholders, first=not turns and not prompt)
            if supervised:
                turns.append(_Turn(prompt, ids, []))
                prompt = []
            elif after_answer:  # `_pieces` follows every answer with the rest of its turn
                turns[-1].tail = ids
            else:
                prompt += ids
            after_answer = supervised
        input_ids, labels = [], []
        for turn in turns:
            room = self.max_length - len(input_ids) - len(turn.prompt)
            if room < 1:
                break
            answer = turn.answer[:room]  # a cut answer loses its end-of-turn token: the model must not learn to stop
            input_ids += turn.prompt + answer
            labels += [IGNORE_INDEX] * len(turn.prompt) + answer
            if len(answer) < len(turn.answer):
                break
            tail = turn.tail[: self.max_length - len(input_ids)]
            input_ids += tail
            labels += [IGNORE_INDEX] * len(tail)
        if not input_ids:
            length = len(turns[0].prompt) + 1 if turns else 0
            raise SkipSample(
                TOO_LONG,
                f"the first prompt and one answer token need {length} tokens, more than max_length "
                f"({self.max_length}).",
            )
        return input_ids, labels
