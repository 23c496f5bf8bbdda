# One image for every Cowrie service; the command names the service to run.
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --engine-strict
COPY tsconfig.json buf.yaml buf.gen.yaml ./
COPY proto ./proto
COPY gen ./gen
COPY services ./services
COPY scripts ./scripts
USER node
ENTRYPOINT ["node", "--import", "tsx", "services/main.ts"]
