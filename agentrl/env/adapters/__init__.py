"""Environments from other ecosystems as agentrl :class:`~agentrl.env.TextEnv` s, one small module each,
imported only when an environment of that kind is made (their packages are optional extras):

==================  =================================================  ===========================
module              takes                                               extra
==================  =================================================  ===========================
``skyrl_gym``       a skyrl-gym ``BaseTextEnv`` (by its skyrl-gym id)   ``agentrl[skyrl]``
``trl``             a class with TRL's ``environment_factory``          none
                    contract: ``reset()``, public methods as tools,
                    ``get_reward()``
``mcp_tools``       the tools of MCP servers (stdio or HTTP) as an      ``agentrl[mcp]``
                    environment's tools
``openenv``         an OpenEnv ``Environment`` in-process, or an        ``agentrl[openenv]``
                    OpenEnv server by URL
``verifiers``       a verifiers (``verifiers.v1``) taskset with its     ``agentrl[verifiers]``
                    tools, rubric and ``Env``; agentrl plays its seat
==================  =================================================  ===========================

docs/environments.md gives the mapping of each (observations, tools, rewards, termination) and what does
not carry over.
"""
