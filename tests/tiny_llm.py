"""A tiny chat causal LM whose greedy output is known, and a tiny extractive QA model, built in a second.

The causal LM's layers add nothing to the residual stream (their output projections are zero), and
its head maps each token to the next one of a fixed cycle: after the chat template's generation
prompt it always writes the same CHAIN_LENGTH tokens, then <|im_end|>. So stop handling, per-row
max_new_tokens and left padding have exact expected outputs.
"""

from __future__ import annotations

from pathlib import Path

CHAIN_LENGTH = 6
GREEDY_FILE = "greedy_output.txt"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Summaries, translations and answers: grounded in the context.",
    "Question: what is the answer? Context: the answer is forty two. Translate the text into French.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]<>/-",
]


def tiny_llm_specs(root: Path) -> list[dict[str, object]]:
    """Registry entries of the tiny models (all LLM kinds share one copy of the weights in a worker)."""
    llm = {"runner": "hf_causal_lm", "source": str(root / "tiny-llm"), "max_input_tokens": 400, "max_batch_size": 4,
           "max_batch_tokens": 4096}
    limits = {"max_new_tokens": 16, "max_new_tokens_limit": 64, "max_temperature": 1.0}
    return [
        {"name": "tiny-llm", "kind": "abstractive", **llm, "options": limits},
        {"name": "tiny-llm-translate", "kind": "translate", **llm, "options": limits},
        {"name": "tiny-llm-answer", "kind": "answer", **llm, "options": limits},
        # A time limit every job passes at its first token: the job fails alone, the worker goes on.
        {"name": "tiny-llm-deadline", "kind": "abstractive", **llm, "options": {**limits, "job_time_limit_s": 0}},
        {"name": "tiny-qa", "kind": "extractive_qa", "runner": "hf_extractive_qa", "source": str(root / "tiny-qa")},
    ]


def build_tiny_causal_lm(directory: Path) -> str:
    """Save the tiny chat LM in `directory`; returns the text its greedy generation always gives."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE

    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                         pad_token_id=eos)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    start = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)[-1]
    letters = [i for i in range(len(specials), vocab) if i != start and tokenizer.decode([i]).strip().isalpha()]
    chain = letters[:CHAIN_LENGTH]
    order = [start, *chain, eos, *(i for i in range(vocab) if i not in {start, eos, *chain})]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = torch.nn.functional.normalize(model.model.embed_tokens.weight, dim=-1)
        head = torch.zeros_like(model.lm_head.weight)
        for position, token in enumerate(order):  # token -> the next one in `order`: its logit is highest
            head[order[(position + 1) % len(order)]] = 20 * embeddings[token]
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    greedy = str(tokenizer.decode(chain, skip_special_tokens=True).strip())
    (directory / GREEDY_FILE).write_text(greedy)
    return greedy


def build_tiny_qa(directory: Path, tokenizer_dir: Path) -> None:
    """A random BERT question-answering model with the tiny BERT tokenizer saved in `tokenizer_dir`."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertForQuestionAnswering(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


__all__ = ["CHAIN_LENGTH", "GREEDY_FILE", "build_tiny_causal_lm", "build_tiny_qa", "tiny_llm_specs"]
