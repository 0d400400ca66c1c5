"""Generic Hugging Face runners (hub id or directory): sequence classifier and seq2seq summarizer."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from producer.contract import ClassifyInput, SummarizeInput
from worker.runners.base import Runner, label_scores, max_length, resolve_source
from worker.runners.chunking import split_by_tokens
from worker.runners.embeddings import CHUNK_OVERLAP_TOKENS, describe_chunks


class _HFRunner(Runner):
    auto_class: Any

    def setup(self) -> None:
        path = resolve_source(self.spec.source)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.model: Any = self.auto_class.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.max_tokens = max_length(self.tokenizer, self.spec, self.model.config)

    def encode(self, texts: list[str]) -> Any:
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt",
            # BERT-style tokenizers add token_type_ids, which seq2seq models reject in generate().
            return_token_type_ids=False,
        ).to(self.device)


class SequenceClassifier(_HFRunner):
    auto_class = AutoModelForSequenceClassification

    def setup(self) -> None:
        super().setup()
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]

    @torch.inference_mode()
    def predict(self, batch: list[ClassifyInput]) -> list[dict[str, Any]]:
        window = self.max_tokens - self.tokenizer.num_special_tokens_to_add()
        chunks = [split_by_tokens(self.tokenizer, x.text, window, CHUNK_OVERLAP_TOKENS, truncate=bool(x.truncate))
                  for x in batch]
        logits = self.model(**self.encode([t for c in chunks for t in c.texts])).logits.float()
        outputs, offset = [], 0
        for c in chunks:  # a long text's logits: the mean of its chunks'
            probabilities = torch.softmax(logits[offset : offset + len(c.texts)].mean(0), dim=-1)
            outputs.append({**label_scores(probabilities.tolist(), self.labels), **describe_chunks(c)})
            offset += len(c.texts)
        return outputs


class Seq2SeqSummarizer(_HFRunner):
    auto_class = AutoModelForSeq2SeqLM

    @torch.inference_mode()
    def predict(self, batch: list[SummarizeInput]) -> list[dict[str, Any]]:
        generated = self.model.generate(
            **self.encode([x.text for x in batch]),
            max_new_tokens=int(self.spec.options.get("max_new_tokens", 64)),
            num_beams=int(self.spec.options.get("num_beams", 1)),
            do_sample=False,
        )
        return [{"summary": s.strip()} for s in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
