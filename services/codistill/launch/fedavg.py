"""Weight averaging (FedAvg, McMahan et al. 2017): the alternative codistill is measured against.

Every `average_every` steps each region deposits its weights and waits for
the average of all regions' weights, weighted by their labeled-slice sizes.
The same class serves in-process and, wrapped by Ray, as the hub actor of a
Ray run: weight averaging needs a hub, which is one of the reasons to prefer
exchanging predictions.
"""

from __future__ import annotations

import threading

import torch


class WeightAverager:
    def __init__(self, sizes: list[int], timeout_s: float = 300.0):
        total = float(sum(sizes))
        self.shares = [s / total for s in sizes]
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._deposits: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
        self._averages: dict[int, dict[str, torch.Tensor]] = {}
        self._collected: dict[int, int] = {}

    def average(self, region: int, round_: int, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Deposit this region's weights for `round_`; block until every region did; return the average."""
        with self._cond:
            self._deposits.setdefault(round_, {})[region] = state
            if len(self._deposits[round_]) == len(self.shares):
                deposits = self._deposits.pop(round_)
                self._averages[round_] = {
                    key: sum(self.shares[r] * deposits[r][key].float() for r in deposits).to(state[key].dtype)
                    for key in state
                }
                self._cond.notify_all()
            if not self._cond.wait_for(lambda: round_ in self._averages, timeout=self.timeout_s):
                raise TimeoutError(f"weight averaging round {round_} incomplete after {self.timeout_s:.0f} s")
            result = self._averages[round_]
            self._collected[round_] = self._collected.get(round_, 0) + 1
            if self._collected[round_] == len(self.shares):
                del self._averages[round_], self._collected[round_]
            return result
