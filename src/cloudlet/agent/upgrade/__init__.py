"""Agent upgrades: installs beside the running one, a supervisor that runs the chosen
one and rolls a trial back by itself, and the agent's side of it.

``record`` is the file the supervisor and the agents share; ``installs`` makes and finds
installs; ``supervisor`` is ``cloudlet agent supervise``; ``upgrader`` is the agent's
side (fetch, install, stage, commit, report). Nothing is re-exported here: the
supervisor imports ``record`` and ``installs`` alone and must not pay for the rest.
"""
