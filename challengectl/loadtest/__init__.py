"""The load generator and its reports (docs/loadtest.md): profiles, open-model schedules, the generator
processes, resource snapshots, the versioned JSON report, thresholds, the Markdown report and compare."""
