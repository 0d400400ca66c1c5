"""Generic Hugging Face runners (hub id or directory): sequence classifier and seq2seq summarizer.

A text longer than the window is chunked: the classifier averages its chunks' logits, the summarizer
map-reduces (each chunk summarized, then the summaries, until one remains).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from producer.contract import ClassifyInput, SummarizeInput
from worker.runners.backends import BackendError, Forward, load_forward
from worker.runners.base import Runner, label_scores, max_length, resolve_source
from worker.runners.chunking import in_runs, reduce_groups, split_by_tokens
from worker.runners.embeddings import CHUNK_OVERLAP_TOKENS, describe_chunks


class SequenceClassifier(Runner):
    """An encoder with a classification head, on any backend (docs/backends.md)."""

    def setup(self) -> None:
        path = resolve_source(self.spec.source)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.forward: Forward = load_forward(
            self.spec, path, auto_class=AutoModelForSequenceClassification, output="logits", device=self.device,
            dtype=self.dtype, input_names=list(self.tokenizer.model_input_names),
        )
        config = AutoConfig.from_pretrained(path)
        self.max_tokens = max_length(self.tokenizer, self.spec, config)
        self.labels = [str(config.id2label[i]) for i in range(len(config.id2label))]

    @torch.inference_mode()
    def predict(self, batch: list[ClassifyInput]) -> list[dict[str, Any]]:
        window = self.max_tokens - self.tokenizer.num_special_tokens_to_add()
        chunks = [split_by_tokens(self.tokenizer, x.text, window, CHUNK_OVERLAP_TOKENS, truncate=bool(x.truncate))
                  for x in batch]
        encoded = self.tokenizer([t for c in chunks for t in c.texts], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.forward.device)
        logits = self.forward(encoded).float()
        outputs = []
        for c, run in zip(chunks, in_runs(logits, [len(c.texts) for c in chunks]), strict=True):
            probabilities = torch.softmax(run.mean(0), dim=-1)  # a long text's logits: the mean of its chunks'
            outputs.append({**label_scores(probabilities.tolist(), self.labels), **describe_chunks(c)})
        return outputs


class Seq2SeqSummarizer(Runner):
    def setup(self) -> None:
        if self.spec.backend != "torch":
            raise BackendError(f"model {self.spec.name!r}: backend {self.spec.backend!r} serves encoder runners only; "
                               f"runner {self.spec.runner!r} runs on 'torch'")
        path = resolve_source(self.spec.source)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.model: Any = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.max_tokens = max_length(self.tokenizer, self.spec, self.model.config)
        # A chunk's tokens: the window less the special tokens the tokenizer adds (T5's </s>).
        self.window = self.max_tokens - self.tokenizer.num_special_tokens_to_add()

    def encode(self, texts: list[str]) -> Any:
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt",
            # BERT-style tokenizers add token_type_ids, which seq2seq models reject in generate().
            return_token_type_ids=False,
        ).to(self.device)

    def predict(self, batch: list[SummarizeInput]) -> list[dict[str, Any]]:
        overlap = int(self.spec.options.get("chunk_overlap_tokens", CHUNK_OVERLAP_TOKENS))
        chunks = [split_by_tokens(self.tokenizer, x.text, self.window, overlap, truncate=bool(x.truncate))
                  for x in batch]
        parts = self._summarize([c.texts for c in chunks])
        # Summaries of several chunks are summarized again, until one remains (map-reduce).
        while any(len(p) > 1 for p in parts):
            groups = [reduce_groups(p, self._fits) if len(p) > 1 else [] for p in parts]
            reduced = self._summarize([["\n\n".join(g) for g in job_groups] for job_groups in groups])
            parts = [r if len(p) > 1 else p for p, r in zip(parts, reduced, strict=True)]
        return [{"summary": p[0], **c.describe()} for p, c in zip(parts, chunks, strict=True)]

    def _fits(self, summaries: list[str]) -> bool:
        joined = "\n\n".join(summaries)
        return len(self.tokenizer(joined, add_special_tokens=False)["input_ids"]) <= self.window

    @torch.inference_mode()
    def _summarize(self, texts_per_job: list[list[str]]) -> list[list[str]]:
        """Each job's texts summarized, every job's together in batches of at most `max_batch_size`."""
        flat = [t for texts in texts_per_job for t in texts]
        summaries: list[str] = []
        for start in range(0, len(flat), self.spec.max_batch_size):
            generated = self.model.generate(
                **self.encode(flat[start : start + self.spec.max_batch_size]),
                max_new_tokens=int(self.spec.options.get("max_new_tokens", 64)),
                num_beams=int(self.spec.options.get("num_beams", 1)),
                do_sample=False,
            )
            summaries += [s.strip() for s in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
        return in_runs(summaries, [len(texts) for texts in texts_per_job])
