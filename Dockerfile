# The whole pipeline in an image, no Python needed on the host:
#   docker build -t optuna-mlflow-pipeline .
#   docker run --user "$(id -u):$(id -g)" -v "$PWD/outputs:/app/outputs" optuna-mlflow-pipeline
# or as a Dask worker for trials tuned elsewhere (same project version on both sides):
#   docker run --network host optuna-mlflow-pipeline dask worker tcp://SCHEDULER:8786
# See the README ("Docker") for changing params without a rebuild (model.family: lightgbm
# works too). `... optuna-mlflow-pipeline dvc plots show` writes outputs/dvc_plots/index.html.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # any --user uid gets a writable home for dvc's, matplotlib's and mlflow's caches, and a
    # user name (getpass, used by dvc, fails for a uid without a passwd entry otherwise)
    HOME=/tmp \
    USER=pipeline \
    LOGNAME=pipeline \
    MPLCONFIGDIR=/tmp/matplotlib \
    # `import hpo` from any folder: a Dask worker unpickles trials as hpo.execution.dask
    PYTHONPATH=/app/stages

WORKDIR /app

# Dependencies first, pinned exactly as the README's setup, so that a code change reuses
# this layer. The runtime dependencies, the `cluster` extra (dask worker/scheduler, psycopg),
# the `lightgbm` extra (model.family: lightgbm) and dumb-init, the init process the entrypoint
# runs commands under; the test tools stay out of the image. LightGBM's wheel loads the
# system's OpenMP runtime (libgomp1), which the slim base lacks; its version is the one of the
# base's Debian release (the Python packages are the pinned ones).
COPY pyproject.toml constraints.txt ./
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = p['optional-dependencies']; print('\n'.join(p['dependencies'] + extras['cluster'] + extras['lightgbm']))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt dumb-init==1.2.5.post1 \
    && rm /tmp/requirements.txt

COPY dvc.yaml params.yaml ./
COPY data/ data/
# The custom Vega templates of dvc.yaml's plots (one per data.task) and the plots page's HTML
# template, moved into .dvc/ once `dvc init` has made it (it refuses an existing .dvc/).
# `dvc plots show` writes its page to outputs/dvc_plots/ (plots.out_dir), not to read-only /app.
COPY .dvc/plots/ dvc-templates/plots/
COPY .dvc/plots_page.html dvc-templates/
COPY stages/ stages/
COPY docker/entrypoint.sh /usr/local/bin/entrypoint

# No .git in the image: DVC runs without Git (repro, status, metrics/plots show).
# The code is read-only to every uid; outputs/ is the only folder a run writes. DVC's own
# state (dvc.lock, the prepared split, its cache, locks and index) is reached through
# symlinks into outputs/.dvc-state/, which the entrypoint creates: so a run works under
# `docker run --read-only`, and the next run on the same outputs/ reruns only what changed.
RUN dvc init --no-scm --quiet \
    && mv dvc-templates/plots dvc-templates/plots_page.html .dvc/ \
    && rmdir dvc-templates \
    && dvc config plots.html_template plots_page.html \
    && dvc config plots.out_dir outputs/dvc_plots \
    && dvc config core.analytics false \
    && dvc config core.check_update false \
    && dvc config cache.dir /app/outputs/.dvc-state/cache \
    && dvc config core.site_cache_dir /app/outputs/.dvc-state/site-cache \
    && rm -rf .dvc/tmp \
    && ln -s ../outputs/.dvc-state/tmp .dvc/tmp \
    && ln -s outputs/.dvc-state/dvc.lock dvc.lock \
    && mkdir -p outputs \
    && rm -rf data/prepared \
    && ln -s ../outputs/.dvc-state/prepared data/prepared \
    && chmod -R u=rwX,go=rX /app \
    && chmod 1777 outputs \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin pipeline

USER 10001
ENTRYPOINT ["entrypoint"]
CMD ["dvc", "repro"]
