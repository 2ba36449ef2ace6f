"""CreditBench: synthetic tasks with exactly known credit, and a runner that scores every registered
credit estimator on them (credit.md §23).

    env.py      tasks (bifurcation chains, multi-turn key-value lookup) + exact DP ground truth
    policy.py   the tabular softmax policy and its REINFORCE update
    inputs.py   CreditInputs for any estimator from its declared needs; per-method extras adapters
    metrics.py  decisive mass, Spearman, sign error, filler credit
    run.py      the suite, the runner, markdown / JSON / PNG outputs (`python -m credo.creditbench.run`)
    cli.py      `credo creditbench`
"""
