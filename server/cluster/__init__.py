"""`python main.py --ray`: the server keeps the queue, history and API; prompts run on Ray actors.

ray_setup.py joins the cluster and sizes the workers, actor.py is the worker inside each actor,
dispatch.py the server's side (which worker runs what, and what happens when one dies).
Needs Ray (`pip install 'latentgraph[ray]'`); nothing imports this package without --ray.
"""
from server.cluster.dispatch import ClusterWorker

__all__ = ["ClusterWorker"]
