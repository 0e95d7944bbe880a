"""Environments from other ecosystems as agentrl :class:`~agentrl.env.TextEnv` s, one small module each,
imported only when an environment of that kind is made (their packages are optional extras):

=======================  =======================================================  ======================
module                   takes                                                    extra
=======================  =======================================================  ======================
``skyrl_gym``            a skyrl-gym ``BaseTextEnv`` (by its skyrl-gym id)        ``agentrl[skyrl]``
``trl``                  a class with TRL's ``environment_factory`` contract:     none
                         ``reset()``, public methods as tools, ``get_reward()``
``verifiers``            a verifiers (``verifiers.v1``) taskset with its tools,   ``agentrl[verifiers]``
                         rubric and ``Env``; agentrl plays its seat
``verifiers_taskset``    the other way: agentrl environments as a verifiers       ``agentrl[verifiers]``
                         taskset and ``Env``
``openenv``              an OpenEnv ``Environment`` in-process, or an OpenEnv     ``agentrl[openenv]``
                         server by URL
``mcp_tools``            the tools of MCP servers (stdio or HTTP) as an           ``agentrl[mcp]``
                         environment's tools
=======================  =======================================================  ======================

docs/environments.md gives the mapping of each (observations, tools, rewards, termination) and what does
not carry over.
"""
