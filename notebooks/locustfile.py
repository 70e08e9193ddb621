"""The load of load_experiment.ipynb: every user GETs /work, pausing $PAUSE s between."""

from __future__ import annotations

import os

from locust import HttpUser, constant, task

WORK_MS = os.environ.get("WORK_MS", "2")


class Client(HttpUser):
    wait_time = constant(float(os.environ.get("PAUSE", "0.05")))

    @task
    def work(self) -> None:
        self.client.get(f"/work?ms={WORK_MS}", name="/work")
