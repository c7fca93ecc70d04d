import { MemoryPathInfoService } from "../../src/store/pathinfo/memory.ts";
import { pathInfoServiceConformance } from "../conformance/pathinfo_suite.ts";

pathInfoServiceConformance("memory", () => {
  const service = new MemoryPathInfoService();
  return Promise.resolve({ service, cleanup: () => service.close() });
});
