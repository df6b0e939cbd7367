"""Print the MLflow UI address of params.yaml's experiment runs table (used by `make mlflow-ui`)."""

from rlhf_lab import config
from rlhf_lab.runtime.stage import configure_environment, runs_page_url

if __name__ == "__main__":
    configure_environment()
    print(f"MLflow UI: open {runs_page_url(config.load('params.yaml'))}", flush=True)
