"""A demonstration whose assistant text spells a special token is trained as that text, not as the token."""

from agentrl.chat import ChatTemplate
from agentrl.data.demos import demo_sample
from agentrl.models import load_tokenizer


def test_a_demo_mentioning_the_end_of_turn_token_does_not_end_its_turn_there():
    template = ChatTemplate(load_tokenizer("tiny-qwen2"))
    eot = template.end_of_turn_ids
    text = "ChatML ends a turn with <|im_end|> and opens one with <|im_start|>."
    s = demo_sample(template, [{"role": "user", "content": "How do turns end?"}, {"role": "assistant", "content": text}])
    assert s.loss_mask == [1] * len(s.response_ids)
    assert s.response_ids.count(eot[0]) == 1 and s.response_ids[-1:] == eot  # only the real end of the turn
    assert template.tokenizer.decode(s.response_ids) == text + "<|im_end|>"
    # what the episode loop would render for the same text inside a message
    assert s.response_ids[:-1] == template.encode_text(text)
