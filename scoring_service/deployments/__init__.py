"""Which model packages are live and how an answer is decided: the deployment file's schema,
package loading and checks, the live deployment (variants, shadows, fallbacks, ensembles),
rollout (swap, rollback, history)."""
