"""Input kinds: the ways procedures come in to be indexed (docs/architecture.md#where-to-add-x).

- :mod:`.base`: what a kind declares (:class:`~.base.InputKind`): its typed job model,
  its path fields, its source builder, its ``polypindex index`` command;
- :mod:`.coco`, :mod:`.video`, :mod:`.frames`: the kinds;
- :mod:`.registry`: kind name → kind (:data:`~.registry.KINDS`), the one place to add
  one. The job runner (:mod:`polypindex.indexer.jobs`), the service's request union and
  path display (:mod:`polypindex.service.job_schemas`) and the CLI's ``index`` commands
  derive from it.
"""
