"""What the service records and watches: drift of inputs and scores, the prediction log and
its recent-answers index, explanations of logged answers."""
