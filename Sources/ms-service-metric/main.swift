import MSMAgent
print(AgentPlaceholder.hash())
