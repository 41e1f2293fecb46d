"""Credit scoring: loan applications, their applicants' credit history and zipcode statistics."""
